"""Configs shipped with selfsup-distill (copies of examples/configs, see package_configs.py)."""
