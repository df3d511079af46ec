# SPDX-License-Identifier: MIT
"""A byte-for-byte picture of a directory tree, for tests that assert nothing was written."""

import os
from typing import Dict, Tuple


def tree(path: str) -> Dict[str, Tuple[int, int, int, bytes]]:
    """Every entry under `path` (relative name -> mode, mtime, size, content of regular files;
    symlinks are not followed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            data = b""
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as f:
                    data = f.read()
            out[os.path.relpath(p, path)] = (st.st_mode, st.st_mtime_ns, st.st_size, data)
    return out
