"""``selfsup-run`` tool commands: export and import backbone weights, migrate MMSelfSup /
OpenSelfSup configs, plot a run's curves, count parameters. Each module has
``run(args) -> int`` (``args``: the parsed command line); none imports torch at import time."""
