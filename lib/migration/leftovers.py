# SPDX-License-Identifier: MIT
"""What a killed runner's scripts left running: found and stopped by the next runner.

Two executions of migration scripts must never overlap (issue 9). A runner that gets a signal
stops its script's process group itself (migration.interrupts); a runner killed by
SIGKILL runs no code, and its script goes on as an orphan. Two mechanisms keep the next runner
from starting the script again beside it:

1. The script's processes inherit the runner's lock (runner._run_one): while one of them holds
   it, the next runner waits for the lock. A process that closes the fds it inherited (Python's
   subprocess does by default, so do daemons and `closefrom` tools) drops its copy.
2. Every script gets MIGRATION_RUNNER=<pid>:<start>, the identity of the runner that started it
   (its pid and its start time in clock ticks since boot, from /proc/<pid>/stat: a pid alone may
   be reused). Before it waits for the lock, a runner that finds started notes (the trace of an
   interrupted run) stops every process whose environment carries the identity of a runner that
   no longer exists, and waits until they are gone. A live runner's scripts are never touched.

Only a process that both closes its inherited fds and clears its environment escapes both;
README says so. Reading other processes' environments needs root (the runner at boot and in
updaters' hooks); run as another user, only that user's processes are seen, which is all such a
runner could have started.
"""

import contextlib
import os
import signal
import time
from typing import Dict, List, Optional

VARIABLE = "MIGRATION_RUNNER"
_ENVIRON_MAX = 1 << 20
#: How long a runner waits for killed leftovers to be gone (they get SIGKILL: only an
#: uninterruptible sleep in the kernel, a stuck NFS or device, can delay them).
STOP_WAIT = 10.0


def _stat_fields(pid: int) -> Optional[List[str]]:
    """Fields 3... of /proc/<pid>/stat (after the command name, which may hold spaces)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read(4096)
    except OSError:
        return None
    return data.rpartition(b")")[2].decode("ascii", "replace").split()


def _start_ticks(pid: int) -> Optional[int]:
    """The start time of a live (not zombie) process, None when there is none with that pid."""
    fields = _stat_fields(pid)
    if not fields or len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])  # field 22, starttime


def identity(pid: Optional[int] = None) -> str:
    """`<pid>:<start>` of a live process (default: this one)."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}:{_start_ticks(pid)}"


def _alive(ident: str) -> bool:
    pid, _, start = ident.partition(":")
    if not pid.isascii() or not pid.isdigit():
        return False
    return str(_start_ticks(int(pid))) == start


def _marker(pid: int) -> Optional[str]:
    """The MIGRATION_RUNNER value in a process's environment, if any."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            data = f.read(_ENVIRON_MAX)
    except OSError:
        return None
    prefix = VARIABLE.encode() + b"="
    for entry in data.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix):].decode("ascii", "replace")
    return None


def orphans() -> Dict[str, List[int]]:
    """Live processes started by scripts of runners that no longer exist, by runner identity."""
    me = os.getpid()
    found: Dict[str, List[int]] = {}
    dead: Dict[str, bool] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        ident = _marker(int(entry))
        if ident is None:
            continue
        if ident not in dead:
            dead[ident] = not _alive(ident)
        if dead[ident]:
            found.setdefault(ident, []).append(int(entry))
    return found


def stop() -> int:
    """SIGKILL every orphan (again and again while they fork) until none is left or STOP_WAIT
    has passed; returns how many were killed. The orphans are part of an interrupted run: the
    script runs again from the start, as after a power cut."""
    killed = set()
    deadline = time.monotonic() + STOP_WAIT
    while True:
        left = [pid for pids in orphans().values() for pid in pids]
        if not left or time.monotonic() >= deadline:
            return len(killed)
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        time.sleep(0.01)
