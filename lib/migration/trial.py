# SPDX-License-Identifier: MIT
"""The runs of `migration test`, inside the namespaces of migration.sandbox:
`python3 -m migration.trial WORK` reads WORK/job.json and writes WORK/result.json.

1. The first run: every script, in the runner's order, on a fresh view of OLDROOT, each as the
   runner runs it (migration.execute: errexit for shells, a sealed copy run as
   /proc/self/fd/N, stdin /dev/null, its own process group, the MIGRATION_* environment, working
   directory /, a new TMPDIR under /run), chrooted into the view. A picture of the tree after
   each script says what it changed.
2. The second run: all of them again on the result. Whatever a script changes now, it would
   change again on a device where it ran twice (after an interruption): not idempotent.
3. With cut points: for each script and each point, a fresh view, the scripts before it, the
   script killed (SIGKILL to its process group) that many ms after its start, then the runner's
   next run: the script again from its start and the ones after it. The result must be the first
   run's.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from typing import Any, Dict, List, Optional, Tuple

from migration import execute, treediff
from migration.files import shown
from migration.sandbox import VIRTUAL, Sandbox, SandboxError
from migration.scripts import interpreter

#: The environment of a service on the device, not the author's.
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
}
#: Where the runner installs scripts: their MIGRATION_SCRIPT.
SCRIPTS_DIR = "/etc/migration.d"
#: Output kept for the report of a failed script (the end of its log).
OUTPUT_TAIL = 16 * 1024
#: Default cut points, as fractions of the script's duration in the first run.
CUT_FRACTIONS = (0.25, 0.5, 0.75)

Picture = Dict[str, treediff.Entry]


class _Quiet:
    """The scripts' output goes to their logs only: the report shows it where it matters."""

    def write(self, data: bytes) -> int:
        return len(data)


class Trial:
    def __init__(self, job: Dict[str, Any], sandbox: Sandbox) -> None:
        self.job = job
        self.sandbox = sandbox
        self.scripts: List[Dict[str, str]] = job["scripts"]
        self.timeout: Optional[float] = job.get("timeout")
        self.cache: treediff.Cache = {}
        self.sealed: Dict[str, execute.Sealed] = {}
        self.logs = 0

    def picture(self, merged: str) -> Picture:
        return treediff.picture(merged, VIRTUAL, self.cache)

    def run_one(
        self, merged: str, item: Dict[str, str], attempt: int, kill_after_ms: Optional[int] = None
    ) -> Dict[str, Any]:
        """Run one script in a view, as the runner would; its outcome."""
        name = item["name"]
        sealed = self.sealed[name]
        tmpdir = f"/run/migration-tmp.{os.urandom(8).hex()}"
        os.mkdir(merged + tmpdir, 0o700)
        env = dict(
            BASE_ENV,
            MIGRATION_NAME=name,
            MIGRATION_SCRIPT=f"{SCRIPTS_DIR}/{name}",
            MIGRATION_SHA256=sealed.sha256,
            MIGRATION_ROOT="/",
            MIGRATION_IMAGE_ROOT="/",
            MIGRATION_PHASE="boot",
            MIGRATION_ATTEMPT=str(attempt),
            MIGRATION_RUNNER=self.job["runner"],
            TMPDIR=tmpdir,
        )
        self.logs += 1
        log = os.path.join(self.sandbox.work, f"log{self.logs}")
        argv = [self.sandbox.chroot, merged, *interpreter(sealed.head).argv(sealed.path)]
        if kill_after_ms is None:
            result = execute.run_script(
                argv,
                name,
                env,
                cwd=merged,
                log_path=log,
                timeout=self.timeout,
                echo=_Quiet(),
                keep_fds=[sealed.fd],
            )
        else:
            result = execute.run_script(
                argv,
                name,
                env,
                cwd=merged,
                log_path=log,
                timeout=kill_after_ms / 1000,
                kill_grace=0,
                echo=_Quiet(),
                keep_fds=[sealed.fd],
                timeout_signal=signal.SIGKILL,
            )
        shutil.rmtree(merged + tmpdir, ignore_errors=True)
        out: Dict[str, Any] = {
            "name": name,
            "ok": result.ok,
            "exit_code": result.exit_code,
            "reason": result.reason,
            "duration_s": round(result.duration_s, 3),
        }
        if not result.ok:
            with open(log, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - OUTPUT_TAIL))
                out["output"] = f.read().decode("utf-8", "replace")
        os.unlink(log)
        return out

    def run_all(
        self, merged: str, before: Picture, items: List[Dict[str, str]]
    ) -> Tuple[List[Dict[str, Any]], Picture]:
        """A run of `items` in order, with what each changed; stops at a failure."""
        steps = []
        for item in items:
            step = self.run_one(merged, item, 1)
            after = self.picture(merged)
            step["changes"] = [c.as_dict() for c in treediff.diff(before, after)]
            steps.append(step)
            before = after
            if not step["ok"]:
                break
        return steps, before

    def check_interpreters(self, merged: str) -> None:
        """A plain error, before anything runs, when OLDROOT cannot run a script's
        interpreter (scripts run on OLDROOT's own programs, as on the device)."""
        probed = set()
        for item in self.scripts:
            interp = interpreter(self.sealed[item["name"]].head)
            program = interp.command[0]
            if self.sandbox.resolve(merged, program) is None:
                raise SandboxError(
                    f"OLDROOT has no {program} (the interpreter of {shown(item['name'])}): "
                    "scripts run on OLDROOT's own programs, as on the device; give an unpacked "
                    "rootfs of the old release (with the interpreter it ships)"
                )
            if interp.shell and program not in probed:
                probed.add(program)
                # another architecture's binary, a broken link to a library...
                r = self.run_probe(merged, [*interp.command, "-c", ":"])
                if r:
                    raise SandboxError(
                        f"OLDROOT's {program} does not run on this host: {r} "
                        "(a rootfs of another architecture needs qemu-user "
                        "registered with binfmt_misc's F flag)"
                    )

    def run_probe(self, merged: str, argv: List[str]) -> str:
        r = subprocess.run(
            [self.sandbox.chroot, merged, *argv],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=BASE_ENV,
            cwd=merged,
        )
        return "" if r.returncode == 0 else (r.stderr.strip() or f"exit {r.returncode}")

    def cut_points(self, duration_s: float) -> List[int]:
        given = self.job.get("cut_at")
        if given:
            return sorted(set(given))
        ms = duration_s * 1000
        return sorted({max(1, round(ms * f)) for f in CUT_FRACTIONS})

    def cut(self, index: int, at_ms: int, expected: Picture) -> Dict[str, Any]:
        """A fresh view, the scripts before `index`, script `index` killed after `at_ms`, then
        the next run: script `index` and the rest. Compared with `expected`."""
        item = self.scripts[index]
        merged = self.sandbox.fresh_view()
        try:
            out: Dict[str, Any] = {"name": item["name"], "at_ms": at_ms}
            for before in self.scripts[:index]:
                step = self.run_one(merged, before, 1)
                if not step["ok"]:  # the first run passed: the scripts depend on timing
                    out["failed"] = step
                    return out
            killed = self.run_one(merged, item, 1, at_ms)
            out["cut"] = not killed["ok"] and killed["reason"].startswith("timed out")
            if killed["ok"]:
                return out  # finished before the cut: nothing to compare
            if not out["cut"]:  # it failed on its own before the cut
                out["failed"] = killed
                return out
            for attempt, later in enumerate(self.scripts[index:]):
                step = self.run_one(merged, later, 2 if attempt == 0 else 1)
                if not step["ok"]:
                    out["failed"] = step
                    return out
            out["differences"] = [
                c.as_dict() for c in treediff.diff(expected, self.picture(merged))
            ]
            return out
        finally:
            self.sandbox.drop_view(merged)

    def run(self) -> Dict[str, Any]:
        for item in self.scripts:
            self.sealed[item["name"]] = execute.seal(item["path"], item["name"], follow=True)
        merged = self.sandbox.fresh_view()
        self.check_interpreters(merged)
        start = self.picture(merged)
        first, after_first = self.run_all(merged, start, self.scripts)
        result: Dict[str, Any] = {"first_run": first, "second_run": [], "cuts": []}
        if not all(step["ok"] for step in first):
            return result
        result["second_run"], _ = self.run_all(merged, after_first, self.scripts)
        self.sandbox.drop_view(merged)
        if self.job.get("cut"):
            for index, step in enumerate(first):
                for at_ms in self.cut_points(step["duration_s"]):
                    result["cuts"].append(self.cut(index, at_ms, after_first))
        return result


def main(work: str) -> int:
    """Exit 0 with WORK/result.json written (the verdict is the caller's), 2 on a setup error
    (its message in result.json)."""
    with open(os.path.join(work, "job.json"), encoding="utf-8") as f:
        job = json.load(f)
    sandbox = Sandbox(work, job["oldroot"])
    try:
        sandbox.setup()
        result = Trial(job, sandbox).run()
        code = 0
    except SandboxError as e:
        result, code = {"error": str(e)}, 2
    finally:
        try:
            sandbox.close()
        except (SandboxError, OSError) as e:  # the namespaces' end unmounts what is left
            print(f"migration test: cleaning up: {e}", file=sys.stderr)
    with open(os.path.join(work, "result.json"), "w", encoding="utf-8") as f:
        json.dump(result, f)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
