"""selfsup-fsdp: the ``fsdp2`` runtime (``[runner] distributed = "fsdp2"``).

:mod:`selfsup_fsdp.runtime` shards the algorithm with ``torch.distributed.fsdp.fully_shard``
and implements the core's runtime contract (``selfsup_core/engine/runtimes.py``);
:mod:`selfsup_fsdp.shards` writes and reads its sharded checkpoints with
``torch.distributed.checkpoint``. Importing this package imports nothing heavy.
"""
from __future__ import annotations

__version__ = "0.1.0"
