"""Configs shipped with this plugin (selfsup-run list configs)."""
