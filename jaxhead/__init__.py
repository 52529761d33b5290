"""jaxhead: identity-preserving 3D head stylization (PanoHead + SD distillation) in JAX."""

__version__ = "0.1.0"
