"""Evaluation metrics of the paper: FID / KID on the FID Inception-v3's pool3 features; CLIP
embeddings and the CLIP similarity / score / directional similarity."""
