"""``selfsup-run`` helpers that stay in the core: ``show`` (:mod:`.describe`, registry
introspection) and the data paths ``--check`` names (:mod:`.data_paths`). The other commands
come from plugins through the ``selfsup_register_commands`` hook: ``export``,
``import-weights``, ``export-hub``, ``count-params`` (selfsup-models), ``plot-log``
(selfsup-trackers), ``migrate`` (selfsup-migrate)."""
