"""``selfsup-run`` commands of selfsup-models, added through the ``selfsup_register_commands``
hook (:mod:`.commands`): ``export`` and ``import-weights`` (:mod:`.export`), ``export-hub``
(:mod:`.export_hub`), ``count-params`` (:mod:`.count_params`). Each module has
``run(args) -> int``; none imports torch at import time."""
