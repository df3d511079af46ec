# SPDX-License-Identifier: MIT
"""The runner's console (its stderr): written to without ever waiting for it.

The console is whatever stderr is: the journal's socket under systemd, a serial tty under
sysvinit, a pipe to an updater. Any of them can stop taking bytes (a serial console stopped
by XOFF or just slow, a stuck journald, a full pipe nobody reads), and a blocking write would
then stop the runner: no script output read, no timeout enforced, no record written, a boot
that hangs on a message. So nothing the runner prints waits for the console:

- Every write is handed to a writer thread through a queue of at most BUFFER bytes and
  returns at once: a runner message or a script's line waits for nothing but a lock that is
  only held to move a queue entry (microseconds), whatever the console does. The thread alone
  does blocking writes, in CHUNK-byte pieces (so that progress is seen even at 9600 baud:
  512 bytes take about 0.5 s, under STALL_S). It lives while there is something to write (no
  idle thread: a process that forks stays single-threaded whenever the console keeps up), and
  with every signal blocked, so that the runner's signals interrupt the main thread's waits.
- What does not fit is dropped, whole (a script's line or batch of lines, a runner message:
  the console never gets half a line), and so is everything after it until the console has
  taken all that was queued before; then it gets one note, "[N bytes of output not shown on
  the console ...]", and from there on what comes next (a console that comes back gets the
  later output): one gap and one note per stall, not a line here and there. Script output
  is complete in the logs (execute.py); outcomes are in the records.
- Why not O_NONBLOCK: it is a flag of the open file description, which the runner shares with
  its parent and siblings (the tty of rcS, an updater's pipe); setting it would make their
  writes fail with EAGAIN. Reopening /proc/self/fd/2 gives a private description for a tty or
  a pipe, but not for the journal's socket, and would rewind a regular file. Why not
  poll(POLLOUT) before a blocking write: a tty may report room for fewer bytes than a line.
- At exit (atexit) the runner waits for the queue to drain, while the console makes progress:
  it gives up after STALL_S without a byte taken, and after DRAIN_S in all. So a stopped
  console costs a run at most STALL_S once, never per message or per script; a slow one still
  gets the last lines (the summary): 64 KiB is about 6 s at 115200 baud.
- A stderr that is no file descriptor (closed, or redirected to memory by a caller) cannot
  block: it is written directly.
"""

import atexit
import collections
import contextlib
import os
import select
import signal
import sys
import threading
import time
from typing import Deque, Dict, Union

BUFFER = 64 * 1024
CHUNK = 512
STALL_S = 1.0
DRAIN_S = 10.0
_POLLOUT_MS = 100


def _note(dropped: int) -> bytes:
    return (f"migration: [{dropped} bytes of output not shown on the console (it did not take "
            "them in time); script output is in the logs, outcomes in `migration status`]\n"
            ).encode()



#: signal.valid_signals() builds an enum per signal at every call; the writer thread may start
#: once per message, so the set is made once.
_ALL_SIGNALS = signal.valid_signals()

class Console:
    """A file descriptor written by a thread of its own; `write` never blocks."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._cond = threading.Condition()
        self._queue: Deque[bytes] = collections.deque()
        self._queued = 0  # bytes of the queue and of the item being written
        self._dropped = 0  # bytes dropped since the console last caught up
        self._running = False  # a writer thread has work: queued, dropped or in its hands
        self._progress = time.monotonic()  # when the console last took bytes
        self._gone = False  # EPIPE, EIO...: nobody will ever read it
        atexit.register(self.drain)

    def write(self, data: bytes) -> None:
        """Queue `data`, or drop it (counted) when the queue is full or already dropping."""
        with self._cond:
            if self._gone or not data:
                return
            if self._dropped or self._queued + len(data) > BUFFER:
                self._dropped += len(data)
            else:
                self._queue.append(data)
                self._queued += len(data)
            start = not self._running
            if start:
                self._running = True
                self._progress = time.monotonic()
        if start:
            self._start()

    def _start(self) -> None:
        # The runner's signals (errors.Interrupted) must reach the main thread, where a
        # blocking wait is interrupted by them: the writer starts with all of them blocked.
        thread = threading.Thread(target=self._run, name="migration-console", daemon=True)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, _ALL_SIGNALS)
        try:
            thread.start()
        except RuntimeError:  # no thread to be had (limits): the next write tries again
            with self._cond:
                self._running = False
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def drain(self, stall: float = STALL_S, limit: float = DRAIN_S) -> bool:
        """Wait until everything queued is written, while the console takes bytes (at most
        `stall` seconds without progress, `limit` in all). True when it was all written."""
        deadline = time.monotonic() + limit
        with self._cond:
            while self._running:
                now = time.monotonic()
                until = min(deadline, self._progress + stall)
                if now >= until:
                    return False
                self._cond.wait(until - now)
            return not self._gone

    def _run(self) -> None:
        while True:
            with self._cond:
                if not (self._queue or self._dropped):
                    self._running = False
                    self._cond.notify_all()
                    return
                note = not self._queue  # caught up with what came before the gap
                if note:
                    data = _note(self._dropped)
                    self._dropped = 0
                else:
                    data = self._queue.popleft()
            view = memoryview(data)
            while view:
                written = self._write(view[:CHUNK])
                with self._cond:
                    if written < 0:
                        self._gone = True
                        self._queue.clear()
                        self._queued = 0
                        self._dropped = 0
                        self._running = False
                        self._cond.notify_all()
                        return
                    if not note:
                        self._queued -= written
                    self._progress = time.monotonic()
                    self._cond.notify_all()
                view = view[written:]

    def _write(self, data: memoryview) -> int:
        """One write; blocks as long as the console does. -1: the console is gone."""
        while True:
            try:
                return os.write(self.fd, data)
            except BlockingIOError:
                # Someone else set O_NONBLOCK on the shared description: wait for room here.
                with contextlib.suppress(OSError):
                    poller = select.poll()
                    poller.register(self.fd, select.POLLOUT)
                    poller.poll(_POLLOUT_MS)
            except OSError:
                return -1


_consoles: Dict[int, Console] = {}
_lock = threading.Lock()


class _Memory:
    """sys.stderr when it is no file descriptor: written at once, it cannot block."""

    def write(self, data: bytes) -> None:
        stream = sys.stderr
        if stream is None:
            return
        with contextlib.suppress(OSError, ValueError):
            stream.write(data.decode("utf-8", "backslashreplace"))
            stream.flush()


def stderr() -> Union[Console, _Memory]:
    """The runner's stderr as it is now, as something with a `write(bytes)` that never
    blocks."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # None, closed, or in memory
        return _Memory()
    with _lock:
        console = _consoles.get(fd)
        if console is None:
            console = _consoles[fd] = Console(fd)
    return console


def say(line: str) -> None:
    """`line` and a newline on stderr, never waiting for it (see the module docstring)."""
    stderr().write(f"{line}\n".encode("utf-8", "backslashreplace"))
