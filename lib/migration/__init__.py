# SPDX-License-Identifier: MIT
"""meta-migration: run one-shot, per-package migration scripts exactly once, in order, safely.

The same package runs on the target (the runner), at update time against a mounted new root,
and on a build host (manifest generation, lint). Modules that run on the target import only what
OE-core's python3-core, python3-crypt and python3-json ship (see tests/test_imports.py).
"""

__version__ = "0.2.0"

# BitBake's `addpylib ${LAYERDIR}/lib migration` (conf/layer.conf) imports these submodules and
# scans their functions for d.getVar("LITERAL") dependencies of the tasks that call them.
BBIMPORTS = ["bitbake", "tasksources"]
