"""selfsup-contrastive: SimCLR, MoCo v1/v2, MoCo v3, NPID, DenseCL, InterCLR and NNCLR for selfsup.

Components are imported lazily by the core from the entry points in pyproject.toml; import
the modules (``selfsup_contrastive.simclr`` ...) directly to use them from Python.
"""
