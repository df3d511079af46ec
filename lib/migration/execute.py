# SPDX-License-Identifier: MIT
"""Running one script: interpreter and errexit, environment, stdin, output, process group, timeout.

No knowledge of the state dir: the caller passes the log path and gets a Result.

- The script runs in a new session (so a new process group): a `kill 0` or Ctrl-C aimed at the
  script's group never reaches the runner, and the runner can signal everything the script
  started (its group) at once.
- stdin is /dev/null; stdout and stderr share one pipe that the runner reads with poll(2), so
  a script that prints megabytes never blocks on a full pipe. Each line goes to the runner's
  stderr prefixed with the script name (the journal under systemd), up to ECHO_CAP bytes, and
  into a bounded log: the first LOG_HEAD and the last LOG_TAIL bytes, with a note of what was
  dropped in between.
- The console never slows this loop down: what goes to stderr is handed to migration.console,
  which never waits for it (a stopped serial console, a full pipe: it drops, with a note). So
  the timeout fires on time and the log gets everything, whatever the console does.
- A timeout sends SIGTERM to the group, then SIGKILL after `kill_grace` seconds. When the script
  itself exits, whatever it left behind in its group is killed (like a systemd oneshot), and a
  leftover that escaped the group but keeps the pipe open is waited for at most LEFTOVER_GRACE.
- If the runner is interrupted (a signal turned into errors.Interrupted by cli.py) the
  script's group is stopped the same way before the exception goes on.
- `keep_fds` are inherited by the script (the runner passes its lock: see runner._run_one).
- What runs is a sealed private copy (`Sealed`): the bytes hashed are the bytes the interpreter
  reads, whatever happens to the installed file after it was read.
"""

import contextlib
import errno
import fcntl
import os
import select
import signal
import subprocess
import time
from typing import Dict, List, NamedTuple, Optional, Protocol, Sequence

from migration import console, interrupts, scripts
from migration.noop import sha256

# Never follow a symlink planted where a record, temp file or log is created.
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW

LOG_HEAD = 512 * 1024
LOG_TAIL = 512 * 1024
ECHO_CAP = 256 * 1024
LINE_MAX = 4096
LEFTOVER_GRACE = 1.0
DEFAULT_KILL_GRACE = 5.0
_POLL_MS = 100


#: The lowest fd number a descriptor the script inherits is moved to: scripts use the low ones
#: (`exec 3>file`, flock(1)'s `exec 9>lock`), which would close ours in that process.
INHERITED_FD_MIN = 100
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
_COPY_CHUNK = 1 << 16


class Sealed(NamedTuple):
    """A script's content, read once: its sha256, its first bytes (for the interpreter) and a
    sealed memfd holding all of it, which nobody, the script included, can change."""

    fd: int
    sha256: str
    head: bytes

    @property
    def path(self) -> str:
        """The name the interpreter opens: the memfd, as the script's process sees it."""
        return f"/proc/self/fd/{self.fd}"


def high_fd(fd: int) -> int:
    """A close-on-exec duplicate of `fd` at INHERITED_FD_MIN or above (subprocess's pass_fds
    keeps the number in the child)."""
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, INHERITED_FD_MIN)


def seal(path: str, name: str, follow: bool = False) -> Sealed:
    """Read `path` once into a sealed memfd, hashing what is read. The caller compares the hash
    with the one it checked and runs `Sealed.path`: no later write, rename or package upgrade
    of `path` can change what runs. Needs Linux >= 3.17 and /proc (OSError otherwise). Opened
    as discover() opens it (scripts.open_script): a symlink only with `follow` (the entry was
    one when it was checked), never a FIFO or device, never more than SCRIPT_MAX bytes."""
    if not os.path.isdir("/proc/self/fd"):
        raise OSError(0, "/proc is not mounted (scripts run as /proc/self/fd/N)", path)
    src = scripts.open_script(path, follow)
    try:
        mem = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            digest = sha256()
            head = b""
            size = 0
            while True:
                chunk = os.read(src, _COPY_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > scripts.SCRIPT_MAX:
                    raise OSError(errno.EFBIG, scripts.too_big(size), path)
                digest.update(chunk)
                head = head or chunk[:256]
                view = memoryview(chunk)
                while view:
                    view = view[os.write(mem, view) :]
            fcntl.fcntl(mem, fcntl.F_ADD_SEALS, _SEALS)
            os.lseek(mem, 0, os.SEEK_SET)
            fd = high_fd(mem)
        finally:
            os.close(mem)
    finally:
        os.close(src)
    return Sealed(fd, digest.hexdigest(), head)


class Result(NamedTuple):
    exit_code: int  # the script's exit code; 128+N when killed by signal N (shell convention)
    ok: bool
    reason: str  # empty when ok, else why it failed, in words
    duration_s: float
    output_bytes: int
    log_error: str = ""  # the script's log could not be written (the outcome still counts)


class Writer(Protocol):
    """Where the script's lines are echoed: console.stderr() unless the caller says otherwise.
    Its `write` must not block (this loop enforces the timeout)."""

    def write(self, data: bytes, /) -> object: ...


class _Output:
    """Fans the script's output out to the console and to the bounded log."""

    def __init__(self, name: str, log_path: Optional[str], echo: Optional[Writer]) -> None:
        self.prefix = name.encode() + b": "
        self.echo = echo
        self.echoed = 0
        self.partial = b""
        self.total = 0
        self.tail = bytearray()
        self.log_fd: Optional[int] = None
        self.log_error: Optional[str] = None
        self.last = b"\n"  # last byte written to the log
        if log_path is not None:
            try:
                self.log_fd = os.open(
                    log_path, _WRITE_FLAGS, 0o640
                )
            except OSError as e:
                self.log_error = f"cannot write log {log_path}: {e.strerror}"

    def _log(self, data: bytes) -> None:
        if self.log_fd is None:
            return
        if not data:
            return
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.log_fd, view) :]
            self.last = data[-1:]
        except OSError as e:
            self.log_error = f"log write failed: {e.strerror}"
            os.close(self.log_fd)
            self.log_fd = None

    def _say(self, data: bytes) -> None:
        if self.echo is None:
            return
        try:
            self.echo.write(data)
        except (OSError, ValueError):
            self.echo = None  # a caller's writer that failed: the log still has it

    def feed(self, data: bytes) -> None:
        head_room = LOG_HEAD - self.total
        if head_room > 0:
            self._log(data[:head_room])
        if len(data) > head_room:
            self.tail += data[max(head_room, 0) :]
            if len(self.tail) > 2 * LOG_TAIL:
                del self.tail[: len(self.tail) - LOG_TAIL]
        self.total += len(data)
        if self.echo is None or self.echoed > ECHO_CAP:
            return
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        if len(self.partial) > LINE_MAX:
            lines.append(self.partial)
            self.partial = b""
        chunks = []
        for line in lines:
            chunk = self.prefix + line + b"\n"
            self.echoed += len(chunk)
            if self.echoed > ECHO_CAP:
                chunks.append(self.prefix + b"[more output only in the log]\n")
                break
            chunks.append(chunk)
        self._say(b"".join(chunks))

    def _note(self, text: str) -> None:
        sep = b"" if self.last == b"\n" else b"\n"
        self._log(sep + f"[migration: {text}]\n".encode())

    def close(self, note: str) -> None:
        if self.partial and self.echoed <= ECHO_CAP:
            self._say(self.prefix + self.partial + b"\n")
        if self.total > LOG_HEAD:
            tail = bytes(self.tail[-LOG_TAIL:])
            dropped = self.total - LOG_HEAD - len(tail)
            if dropped > 0:
                self._note(f"{dropped} bytes of output dropped here")
            self._log(tail)
        if note:
            self._note(note)
        if self.log_fd is not None:
            os.close(self.log_fd)
            self.log_fd = None


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _exited(pid: int) -> bool:
    """Has `pid` exited? Does not reap it: its zombie keeps the process group id from being
    reused while we may still signal the group."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def run_script(
    argv: List[str],
    name: str,
    env: Dict[str, str],
    cwd: str = "/",
    log_path: Optional[str] = None,
    timeout: Optional[float] = None,
    kill_grace: float = DEFAULT_KILL_GRACE,
    echo: Optional[Writer] = None,
    header: str = "",
    keep_fds: Sequence[int] = (),
    timeout_signal: int = signal.SIGTERM,
) -> Result:
    """Run `argv` as migration `name` and wait for it; see the module docstring. `header` is
    written as the log's first line; `keep_fds` stay open in the script. `timeout_signal`
    SIGKILL kills at the timeout with no grace, as a power cut would (`migration test --cut`)."""
    if echo is None:
        echo = console.stderr()
    out = _Output(name, log_path, echo)
    if header:
        out._note(header)
    start = time.monotonic()
    proc: Optional[subprocess.Popen[bytes]] = None
    eof = exited = timed_out = False
    term_at: Optional[float] = None  # when the group got SIGTERM
    killed = False
    leftover_since: Optional[float] = None
    deadline = None if timeout is None else start + timeout
    try:
        # A signal while the script starts waits until its pid is known: raised inside Popen,
        # after the fork, it would lose the script (see migration.interrupts).
        with interrupts.deferred():
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=cwd,
                    close_fds=True,
                    pass_fds=tuple(keep_fds),
                    start_new_session=True,
                )
            except OSError as e:
                code = 127 if isinstance(e, FileNotFoundError) else 126
                what = "interpreter not found" if code == 127 else "cannot execute interpreter"
                reason = f"{what}: {argv[0]} ({e.strerror})"
                out.close(reason)
                return Result(code, False, reason, time.monotonic() - start, 0,
                              out.log_error or "")
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        interrupts.raise_pending()
        while True:
            now = time.monotonic()
            if not exited:
                exited = _exited(proc.pid)
            if exited:
                if eof:
                    break
                if leftover_since is None:  # something outside still holds the pipe
                    leftover_since = now
                    _killpg(proc.pid, signal.SIGTERM)
                elif now - leftover_since >= LEFTOVER_GRACE:
                    _killpg(proc.pid, signal.SIGKILL)
                    break
            elif deadline is not None and now >= deadline and term_at is None:
                timed_out = True
                term_at = now
                _killpg(proc.pid, timeout_signal)
                killed = timeout_signal == signal.SIGKILL
            if term_at is not None and not killed and now - term_at >= kill_grace:
                killed = True
                _killpg(proc.pid, signal.SIGKILL)
            if eof:
                # The pipe is closed but the script still runs (or is about to be a zombie).
                if deadline is None and term_at is None:
                    # Nothing to time: block until it exits (signals still interrupt).
                    with contextlib.suppress(ChildProcessError):
                        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
                    exited = True
                else:
                    time.sleep(0.002)
                continue
            wait_ms = _POLL_MS
            if deadline is not None and term_at is None:
                wait_ms = min(wait_ms, max(int((deadline - now) * 1000) + 1, 0))
            for _fd, _ev in poller.poll(wait_ms):
                data = os.read(fd, 65536)
                if data:
                    out.feed(data)
                else:
                    eof = True
                    poller.unregister(fd)
    except BaseException:
        # Interrupted (a signal of the runner's) or a bug: do not leave the script running.
        if proc is None:  # Popen itself failed (a bug): nothing was started
            out.close("the script could not be started")
            raise
        _killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(BaseException):
            proc.wait(timeout=min(kill_grace, 2.0))
        _killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        out.close("runner interrupted; script stopped")
        raise
    # Kill whatever the script left behind in its group while its zombie still holds the id.
    assert proc is not None and proc.stdout is not None
    _killpg(proc.pid, signal.SIGKILL)
    status = proc.wait()
    proc.stdout.close()
    duration = time.monotonic() - start
    code = status if status >= 0 else 128 - status
    if timed_out:
        reason = f"timed out after {timeout:g} s: process group killed"
        code = code or 124
    elif status < 0:
        reason = f"killed by signal {-status} ({_signame(-status)})"
    elif status == 127:
        reason = "exit 127: command not found (is the interpreter or a tool missing?)"
    elif status:
        reason = f"exit {status}"
    else:
        reason = ""
    out.close(reason or "exit 0")
    return Result(code, not reason, reason, duration, out.total, out.log_error or "")


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return "unknown"
