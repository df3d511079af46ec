# SPDX-License-Identifier: MIT
"""Signals that would end the runner become errors.Interrupted, so the running script's process
group is stopped, its started note is kept (the run reads as interrupted) and the runner exits
130: the hangup of an updater's hook or of an ssh session must not leave a script running with
no runner to record it.

Handled like SIGTERM: every signal whose default action ends the process (and the real-time
ones), except the uncatchable SIGKILL and the synchronous faults (SIGSEGV, SIGBUS, SIGFPE,
SIGILL, SIGTRAP, SIGSYS), which a handler cannot survive (returning re-runs the faulting
instruction); SIGABRT comes from abort() or a sanitizer and ends the process whatever a handler
does. SIGPIPE and SIGXFSZ stay ignored as Python sets them: a lost console is an EPIPE and a
file size limit an EFBIG, which the output and state code report, not an end. What a SIGKILL
leaves behind is for the next runner (migration.leftovers).

Only the first signal raises: a second one must not cut the first one's cleanup short. And
while a script's process is being started (`deferred()`), the exception waits: raised inside
subprocess.Popen, after the fork, it would lose the pid of a script that then runs on with no
one to stop it; execute.run_script raises it (`raise_pending()`) once it holds the pid.
"""

import contextlib
import signal
from typing import Any, Iterator

from migration.errors import Interrupted

ENDING = ("SIGHUP", "SIGINT", "SIGQUIT", "SIGTERM", "SIGUSR1", "SIGUSR2", "SIGALRM",
          "SIGVTALRM", "SIGPROF", "SIGIO", "SIGPWR", "SIGXCPU", "SIGSTKFLT")

_state = {"by": "", "raised": False, "deferring": 0}


def _interrupt(signum: int, _frame: Any) -> None:
    if _state["by"]:
        return
    _state["by"] = signal.Signals(signum).name
    if not _state["deferring"]:
        raise_pending()


def raise_pending() -> None:
    """Raise the Interrupted a signal left pending during `deferred()` (once)."""
    if _state["by"] and not _state["raised"]:
        _state["raised"] = True
        raise Interrupted(_state["by"])


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Signals received inside are only noted; raise_pending() raises them afterwards."""
    _state["deferring"] += 1
    try:
        yield
    finally:
        _state["deferring"] -= 1


def install() -> None:
    """Turn every signal that would end the runner into Interrupted (see the module doc)."""
    sigs = [getattr(signal, n) for n in ENDING if hasattr(signal, n)]
    sigs += range(signal.SIGRTMIN, signal.SIGRTMAX + 1)
    for sig in sigs:
        signal.signal(sig, _interrupt)
