# SPDX-License-Identifier: MIT
"""The error model of the migration command.

`MigrationError` and its subclasses are *user* errors: something about the input, the
configuration or the machine that the user can fix (a missing directory, a damaged manifest,
an unwritable state dir). They carry a message meant for a human and an exit code, and cli.py
turns them into one line on stderr, never a traceback. Anything else that escapes is a bug in
this program and is shown with a traceback. Domain-specific subclasses live next to the code that
raises them (scripts.ScriptsDirError, state.StateError, state.LockBusy); ManifestError lives
here because the build (lib/migration/bitbake.py) catches it without importing the manifest code.
"""


#: Exit code of an internal error (sysexits.h EX_SOFTWARE): a bug (shown with a traceback), or
#: an interpreter that cannot run this runner (too old, or without a module of python3-core,
#: python3-crypt or python3-json). Distinct from 1 (a script failed), which lets an update go
#: on: the update hooks abort the install on 70, as nothing was checked.
INTERNAL_ERROR = 70


class MigrationError(Exception):
    """A user error: reported as one line on stderr, exit code `exit_code` (2: usage/config)."""

    exit_code = 2


class ManifestError(MigrationError):
    """The image manifest or a package fragment is inconsistent, unreadable or invalid."""


class Interrupted(Exception):
    """The runner got a signal that would end it (migration.interrupts); the running
    script was stopped (exit 130)."""

    exit_code = 130


class Incompatible(MigrationError):
    """This image cannot use the device's data (migration.compat): an incompatible downgrade,
    an upgrade from below the floor, or data that predates the framework. Nothing was written;
    exit 3. `verdict` is the compat.Verdict."""

    exit_code = 3

    def __init__(self, verdict: "object") -> None:
        super().__init__(getattr(verdict, "message", str(verdict)))
        self.verdict = verdict
