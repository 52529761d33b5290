"""Evaluation metrics of the paper: FID / KID on the FID Inception-v3's pool3 features; CLIP
embeddings and the CLIP similarity / score / directional similarity; ArcFace identity
similarity with a camera-derived face crop (identity.py); ΔD, the masked depth difference
(depth.py); pairwise LPIPS / ID similarity across identities (diversity.py)."""
