"""Measured studies of the paper's claims (docs/studies.md), each a command run from the
repository root: ``python -m studies.saddle``, ``studies.vanishing``, ``studies.lr_sensitivity``,
``studies.grouping``."""
