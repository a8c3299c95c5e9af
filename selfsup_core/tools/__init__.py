"""``selfsup-run`` tool commands of the core: export and import backbone weights, plot a run's
curves, count parameters (``migrate`` comes from the selfsup-migrate plugin). Each module has
``run(args) -> int`` (``args``: the parsed command line); none imports torch at import time."""
