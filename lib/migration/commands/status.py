# SPDX-License-Identifier: MIT
"""Show every migration script with its state; needs no lock and never blocks or writes.

States: applied, pending, failed, refused (not run: unsafe, tampered or missing; see "reason"),
interrupted (started, never finished: runs again). A script that a runner is executing right now
shows as pending with "running": true. With --json: one JSON array of objects with name, sha256,
state, attempts, and for applied or failed ones finished_at (ISO 8601 UTC), duration_s,
exit_code; plus reason, package, version, started_at, log when known.
Exit 0 when everything is applied, 1 otherwise.
"""

import json
from typing import Any, Dict

from migration.commands import options

name = "status"
helpmsg = "show every script and its state"


def setup_parser(parser: Any) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON array")


def describe(item: Any, log: str, running: bool) -> Dict[str, Any]:
    """The JSON object of one item (the `status --json` contract)."""
    from migration import runner

    state = item.state
    rec = item.record or {}
    out: Dict[str, Any] = {"name": item.name, "sha256": item.sha256, "state": state}
    if state == runner.INTERRUPTED and running:
        out["state"] = runner.PENDING
        out["running"] = True
    if state in (runner.APPLIED, runner.FAILED):
        for key in ("started_at", "finished_at", "duration_s", "exit_code"):
            out[key] = rec.get(key)
        out["attempts"] = rec.get("attempts", 1)
    elif state == runner.INTERRUPTED:
        out["started_at"] = rec.get("started_at")
        out["attempts"] = rec.get("attempt", 1)
    else:
        out["attempts"] = 0
    if item.reason and out["state"] != runner.PENDING:
        out["reason"] = item.reason
    if item.package:
        out["package"] = item.package
        out["version"] = item.version
    if log:
        out["log"] = log
    return out


def run(args: Any) -> int:
    import os
    import sys

    from migration import runner
    from migration.state import State

    state = State(args.state_dir)
    items, warnings = runner.inspect(options(args), state)
    running = state.lock_held_elsewhere()
    rows = []
    for item in items:
        log = state.log_path(item.sha256)
        rows.append(describe(item, log if os.path.exists(log) else "", running))
    for w in warnings:
        print(f"migration: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        if running:
            print("(a runner is working now)")
        for row in rows:
            details = []
            if row.get("reason"):
                details.append(row["reason"])
            if row.get("running"):
                details.append("running now")
            if row.get("attempts"):
                details.append(f"attempts {row['attempts']}")
            if row.get("finished_at"):
                details.append(f"finished {row['finished_at']} ({row['duration_s']} s)")
            if row.get("log") and row["state"] != runner.APPLIED:
                details.append(f"log {row['log']}")
            print(f"{row['state']:<12} {row['name']}  {', '.join(details)}".rstrip())
        if not rows:
            print(f"no migration scripts in {args.scripts_dir}")
    return 0 if all(i.state == runner.APPLIED for i in items) else 1
