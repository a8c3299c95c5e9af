"""A trainer hook that interrupts the run like Ctrl-C, for the resume tests
(``type = "resume_toy:InterruptAt"``): it sends SIGINT to this process after iteration
``$SELFSUP_TEST_INTERRUPT_AT`` (no variable: it does nothing, so one config serves both the
interrupted and the uninterrupted run)."""
from __future__ import annotations

import os
import signal


class InterruptAt:
    def selfsup_after_iter(self, runner, outputs) -> None:
        at = os.environ.get("SELFSUP_TEST_INTERRUPT_AT")
        if at is not None and runner.iter + 1 == int(at):
            os.kill(os.getpid(), signal.SIGINT)
