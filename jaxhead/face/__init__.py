"""Face alignment from one photo: 3DDFA_V2's geometry (ROI crop, BFM landmarks, pose) and the
pipeline FaceBoxes -> TDDFA (:mod:`jaxhead.models.faceboxes`, :mod:`jaxhead.models.tddfa`)."""
