"""The paper's evaluation protocol (``python -m jaxhead.evaluate``): identities, the three
image sets (SD 2D edits of the frozen renders, each generator's renders, the frozen renders),
an on-disk cache keyed by content hashes, the metrics and the report."""
