"""The training engine: one loop for every algorithm (devices, precision, distribution,
optimisation, schedules, checkpoints, logging)."""
from __future__ import annotations
