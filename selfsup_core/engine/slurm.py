"""Slurm: the torch.distributed environment of a job started with ``srun``.

``srun selfsup-run CONFIG`` starts one process per task; Slurm tells each its place through
``SLURM_PROCID`` (global rank), ``SLURM_LOCALID`` (rank on its node), ``SLURM_STEP_NUM_TASKS``
/ ``SLURM_NTASKS`` (world size) and ``SLURM_STEP_NODELIST`` / ``SLURM_JOB_NODELIST`` /
``SLURM_NODELIST`` (the hosts, in the compressed ``node[01-03,07]`` form). This module turns
them into the variables ``init_process_group(init_method="env://")`` reads: ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` (the first host of the node list) and
``MASTER_PORT`` (derived from ``SLURM_JOB_ID``, so every task of a job picks the same one and two
jobs sharing a node rarely collide). ``MASTER_ADDR`` / ``MASTER_PORT`` already set in the
environment win; a job started by ``torchrun`` (inside ``srun`` or not) is left to torchrun.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping, MutableMapping

#: Ports derived from the job id fall in [PORT_BASE, PORT_BASE + PORT_SPAN), below Linux's
#: ephemeral range (32768-60999), so they do not clash with outgoing connections.
PORT_BASE = 12000
PORT_SPAN = 20000
_TORCHRUN_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class NodeListError(ValueError):
    """A Slurm node list that cannot be expanded."""


def _split_top_level(text: str) -> list[str]:
    """``text`` split at the commas that are not inside brackets."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise NodeListError(f"unbalanced ']' in node list {text!r}")
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise NodeListError(f"unbalanced '[' in node list {text!r}")
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _expand_range(spec: str, text: str) -> list[str]:
    """``"01-03,07"`` -> ``["01", "02", "03", "07"]`` (zero padding kept, as Slurm writes it)."""
    values: list[str] = []
    for item in spec.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", item.strip())
        if not match:
            raise NodeListError(f"cannot read {item!r} in node list {text!r}")
        low, high = match.group(1), match.group(2) or match.group(1)
        if int(high) < int(low):
            raise NodeListError(f"range {item!r} runs backwards in node list {text!r}")
        width = len(low)
        values.extend(str(n).zfill(width) for n in range(int(low), int(high) + 1))
    return values


def _expand_host(pattern: str, text: str) -> list[str]:
    """One host pattern (``rack[1-2]-n[01-02]``) -> every host it names, in Slurm's order."""
    match = re.search(r"\[([^\[\]]*)\]", pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end():]
    return [host for value in _expand_range(match.group(1), text) for host in _expand_host(head + value + tail, text)]


def expand_nodelist(text: str) -> list[str]:
    """Every host of a Slurm node list, in order.

    ``"node[01-03,07],login1"`` -> ``["node01", "node02", "node03", "node07", "login1"]``;
    several bracket groups in one name expand as a product. Raises :class:`NodeListError` on
    text that is not a node list."""
    hosts = [host for pattern in _split_top_level(text) for host in _expand_host(pattern, text)]
    if not hosts:
        raise NodeListError(f"node list {text!r} names no host")
    return hosts


def master_port(job_id: str | int) -> int:
    """The rendezvous port of Slurm job ``job_id``: ``PORT_BASE + job_id % PORT_SPAN``."""
    digits = re.sub(r"\D", "", str(job_id)) or "0"  # array jobs: "1234_5" -> 12345
    return PORT_BASE + int(digits) % PORT_SPAN


def launched_by_srun(environ: Mapping[str, str] | None = None) -> bool:
    """True for a task of ``srun`` that no ``torchrun`` (or other env:// launcher) set up."""
    env = os.environ if environ is None else environ
    if any(key in env for key in _TORCHRUN_KEYS):
        return False
    return "SLURM_PROCID" in env and ("SLURM_STEP_NUM_TASKS" in env or "SLURM_NTASKS" in env)


def torch_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The env:// variables for this Slurm task (empty when not launched by ``srun``).

    Receives the process environment (default ``os.environ``); returns ``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``."""
    env = os.environ if environ is None else environ
    if not launched_by_srun(env):
        return {}
    world_size = env.get("SLURM_STEP_NUM_TASKS") or env["SLURM_NTASKS"]
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
    address = env.get("MASTER_ADDR") or (expand_nodelist(nodelist)[0] if nodelist else "127.0.0.1")
    port = env.get("MASTER_PORT") or str(master_port(env.get("SLURM_JOB_ID", "0")))
    return {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": world_size, "LOCAL_RANK": _local_rank(env),
            "MASTER_ADDR": address, "MASTER_PORT": port}


def _local_rank(env: Mapping[str, str]) -> str:
    """``SLURM_LOCALID``, modulo the GPUs this task sees: with ``--gpus-per-task=1`` (or
    ``--gpu-bind``) Slurm gives each task its own ``CUDA_VISIBLE_DEVICES``, where task 3 of a
    node must use its one GPU, ``cuda:0``; with ``--gpus-per-node`` every task sees them all."""
    local = int(env.get("SLURM_LOCALID", "0"))
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return str(local % len(visible) if visible else local)


def export_torch_env(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Called once at start-up, before the process group is set up: writes :func:`torch_env`
    into ``environ`` (default ``os.environ``) and returns what it wrote (empty: not ``srun``)."""
    env = os.environ if environ is None else environ
    found = torch_env(env)
    env.update(found)
    return found


__all__ = ["NodeListError", "PORT_BASE", "PORT_SPAN", "expand_nodelist", "export_torch_env", "launched_by_srun",
           "master_port", "torch_env"]
