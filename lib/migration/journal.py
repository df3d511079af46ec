# SPDX-License-Identifier: MIT
"""Structured journal entries: one per run and per script outcome, selectable by field.

Under systemd the runner's stderr already goes to the journal (and the console) line by line;
those lines stay exactly as they are, on the console and in the journal. For the events below
the runner also sends one entry of its own over systemd's native journal protocol (an AF_UNIX
datagram to /run/systemd/journal/socket: `KEY=VALUE` lines, or for a value holding a newline
`KEY`, a newline, its length as 64-bit little-endian and the value). Its MESSAGE is the very
text of the console line (the same escaping), so the journal holds the same words twice, never
two differing lines: the stream's line (`_TRANSPORT=stdout`) and the structured entry
(`_TRANSPORT=journal`) with MESSAGE_ID, PRIORITY, SYSLOG_IDENTIFIER=migration and MIGRATION_*
fields, which is what `journalctl MESSAGE_ID=...` or `MIGRATION_RESULT=failed` selects and what
`journalctl -x` explains from the catalog (recipes-core/migration/files/migration.catalog).
Run started has no console line: its entry is the only one.

Where there is no journal socket (sysvinit, an updater without journald) or the run works on
another root (`--root`: not this system's state), nothing is sent; the console lines are all
there is, as before. Sending never waits (MSG_DONTWAIT) and never fails the run: a journald that
does not take the entry at once (queue full, gone, entry too large) loses the structured entry,
not the console line.

`socket` is in OE-core's python3-io, not python3-core: it is imported only here and only when a
journal socket exists; without it (an image that leaves out the runner's recommendation) there
are no structured entries and nothing else changes.
"""

import os
from typing import Dict, Optional, Union

#: The native protocol's socket (sd_journal_sendv(3)).
SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "migration"

#: MESSAGE_ID of each event kind: fixed for good (the catalog and operators' queries name them).
RUN_STARTED = "2abc4ab9ab3d40658658c758eedd0712"
RUN_FINISHED = "a7559e177e5e4be986236976c61a0757"
SCRIPT_APPLIED = "a4faa25c96dd4490819ec77247e383e4"
SCRIPT_FAILED = "54414e5cf07b4d9886c8135c16089210"
SCRIPT_REFUSED = "5f65ecbd82224fa79e8082ba46f125cc"
SCRIPT_INTERRUPTED = "7ca437f1230f4c58bc678123bd4e4853"
IMAGE_REFUSED = "3211b4c405e74904a8d573a5a26e888e"

#: syslog(3) priorities.
ERR, WARNING, NOTICE, INFO = 3, 4, 5, 6

Value = Union[str, int, float, bytes]


def socket_for(root: str) -> Optional[str]:
    """The journal socket a run on `root` sends its entries to, or None: only a run on this
    system's own root (`/`) and only where journald listens."""
    if root != "/" or not os.path.exists(SOCKET):
        return None
    return SOCKET


def encode(fields: Dict[str, Value]) -> bytes:
    """The native protocol's datagram for `fields` (keys: A-Z, 0-9, _, not leading _)."""
    out = bytearray()
    for key, value in fields.items():
        data = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
        name = key.encode("ascii")
        if b"\n" in data:
            out += name + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        else:
            out += name + b"=" + data + b"\n"
    return bytes(out)


def send(path: str, message_id: str, priority: int, message: str, fields: Dict[str, Value]) -> bool:
    """Send one entry to the journal socket at `path`; True when it was taken. Never blocks,
    never raises."""
    entry: Dict[str, Value] = {
        "MESSAGE": message,
        "MESSAGE_ID": message_id,
        "PRIORITY": priority,
        "SYSLOG_IDENTIFIER": IDENTIFIER,
    }
    entry.update(fields)
    try:
        import socket  # python3-io: see the module docstring
    except ImportError:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(encode(entry), socket.MSG_DONTWAIT, path)
    except OSError:
        return False
    return True
