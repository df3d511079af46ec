# SPDX-License-Identifier: MIT
"""Make a script pending again (an administrator's re-run): remove its records.

NAME is a script name in the scripts dir, a name found in the records (a script since removed or
renamed), or the sha256 of a record. A NAME that matches none of these is an error (exit 2) and
changes nothing. Its applied, failed and started records go, every no-op stamp goes (so the
boot unit runs again), its log stays. The next `migration run` runs it again.
"""

from typing import Any, Dict

name = "forget"
helpmsg = "make the named script pending again"


def setup_parser(parser: Any) -> None:
    parser.add_argument("name", metavar="NAME", help="script name (or sha256) to forget")
    from migration.commands import add_lock_wait

    add_lock_wait(parser)


def run(args: Any) -> int:
    import os

    from migration.errors import MigrationError
    from migration.files import shown
    from migration.scripts import ScriptsDirError, discover
    from migration.state import KINDS, State, is_sha256

    state = State(args.state_dir)
    targets: Dict[str, str] = {}
    try:
        scripts, _ = discover(args.scripts_dir)
    except ScriptsDirError:
        scripts = []
    for s in scripts:
        if s.name == args.name and s.sha256:  # "": refused unread, no content to forget
            targets[s.sha256] = "script in " + args.scripts_dir
    for kind in KINDS:
        for sha, record in state.all_records(kind):
            if record.get("name") == args.name:
                targets.setdefault(sha, f"{kind} record")
    if is_sha256(args.name) and any(state.read_record(kind, args.name) != (None, None)
                                    for kind in KINDS):
        targets.setdefault(args.name, "sha256")  # only one that has records (even damaged)
    if not targets:
        raise MigrationError(f"nothing matches {args.name!r}: no script, record or recorded "
                             "sha256 of that name; nothing changed")
    if not os.path.isdir(state.path):
        raise MigrationError(f"state dir {state.path} does not exist: nothing to forget")
    state.lock(args.lock_wait)
    forgotten = 0
    for sha in targets:
        removed = state.forget(sha)
        if removed:
            forgotten += 1
            print(shown(f"forgot {args.name} ({sha[:12]}): removed {', '.join(removed)} record"))
    state.clear_done()
    if not forgotten:
        print(shown(f"{args.name} has no records: it is already pending"))
    return 0
