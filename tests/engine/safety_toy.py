"""A trainer hook that raises, for the job-control tests (``type = "safety_toy:RaiseAt"``)."""
from __future__ import annotations


class RaiseAt:
    """Raises ``ValueError("boom")`` in the hook ``where`` (``before_run``, ``before_epoch``,
    ``before_iter``, ``after_iter``, ``after_epoch``) once ``runner.iter`` equals ``at``."""

    def __init__(self, where: str = "after_iter", at: int = 10) -> None:
        self.where, self.at = where, at

    def _maybe_raise(self, where: str, runner) -> None:
        if where == self.where and runner.iter == self.at:
            raise ValueError("boom")

    def selfsup_before_run(self, runner) -> None:
        self._maybe_raise("before_run", runner)

    def selfsup_before_epoch(self, runner) -> None:
        self._maybe_raise("before_epoch", runner)

    def selfsup_before_iter(self, runner) -> None:
        self._maybe_raise("before_iter", runner)

    def selfsup_after_iter(self, runner, outputs) -> None:
        self._maybe_raise("after_iter", runner)

    def selfsup_after_epoch(self, runner) -> None:
        self._maybe_raise("after_epoch", runner)


class RaiseAfterRun:
    """Raises ``ValueError("late")`` in ``selfsup_after_run``."""

    def selfsup_after_run(self, runner) -> None:
        raise ValueError("late")
