# SPDX-License-Identifier: MIT
"""Code that runs on the target may import only what OE-core's python3-core, python3-crypt and
python3-json packages ship, so the runner recipe can RDEPEND on just those three. The same three
are all that `migration update` assumes of the OLD system's python3 at update time (README;
tests/test_update_hooks.py runs an update with a python3 reduced to them, and checks that one
reduced further makes the runner exit 70 and the hooks abort the install).

The allowlist below was read from OE-core's meta/recipes-devtools/python/python3/
python3-manifest.json (openembedded-core master as stored at commit 01982411b5cc, the Python
3.14 manifest that wrynose ships: "core" lists argparse.py, ast.py, contextlib.py, shutil.py,
signal.py, subprocess.py, selectors.py, typing.py, lib-dynload/fcntl, select, grp, time ...;
"crypt" has hashlib.py; "json" has json/). Modules compiled into the interpreter itself (sys,
posix, errno, pwd, itertools, _io...) need no package. NOT in those packages, so not allowed:
logging, tempfile, datetime (own packages), string and shlex (stringold, shell), base64 and uuid
(netclient), random (math), resource, pprint.
"""

import ast
import os
import sys

import pytest

LIB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "lib", "migration")

CORE = {
    # python3-core: pure-Python files
    "__future__", "_collections_abc", "_compression", "_sitebuiltins", "_weakrefset", "abc",
    "argparse", "ast", "bisect", "bz2", "code", "codecs", "codeop", "collections",
    "configparser", "contextlib", "copy", "copyreg", "csv", "dataclasses", "dis", "encodings",
    "enum", "fnmatch", "functools", "genericpath", "getopt", "gettext", "glob", "heapq",
    "importlib", "inspect", "io", "ipaddress", "keyword", "linecache", "locale", "lzma",
    "ntpath", "opcode", "operator", "optparse", "os", "pathlib", "pkgutil", "platform",
    "posixpath", "re", "reprlib", "rlcompleter", "runpy", "selectors", "shutil", "signal",
    "site", "stat", "stringprep", "struct", "subprocess", "sysconfig", "textwrap", "threading",
    "token", "tokenize", "traceback", "types", "typing", "warnings", "weakref", "zipimport",
    # python3-core: lib-dynload extension modules
    "array", "binascii", "fcntl", "grp", "math", "readline", "select", "time", "unicodedata",
    "zlib", "_posixsubprocess", "_struct", "_bisect", "_heapq", "_csv", "_opcode",
    # compiled into the interpreter (no file to package)
    "sys", "builtins", "posix", "errno", "pwd", "itertools", "_io", "_signal", "atexit", "gc",
    "marshal", "_thread", "_stat", "_collections", "_functools", "_operator", "_abc", "_codecs",
}
CRYPT = {"hashlib", "_sha2", "_sha256"}  # lib-dynload/_sha2 (3.12+), _sha256 (<= 3.11)
JSON = {"json"}
ALLOWED = CORE | CRYPT | JSON

#: Optional imports: module -> (the only file that may import it, its OE-core package). Such
#: an import sits in a `try` that catches ImportError, and the runner works without it (the
#: recipe RRECOMMENDS the package): socket, for the structured journal entries (journal.py).
OPTIONAL = {"socket": ("journal.py", "python3-io")}

#: Modules that never run on the target: BitBake glue (imports bb and oe), not installed.
HOST_ONLY = {"bitbake.py", "tasksources.py"}


def _modules():
    for dirpath, _dirs, files in os.walk(LIB):
        for name in sorted(files):
            if name.endswith(".py") and name not in HOST_ONLY:
                yield os.path.relpath(os.path.join(dirpath, name), LIB)


def _imports(path):
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):  # every import, also those inside functions
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module.split(".")[0]


@pytest.mark.parametrize("module", list(_modules()))
def test_target_modules_import_only_core_crypt_json(module):
    bad = [
        f"{module}:{line}: {name}"
        for line, name in _imports(os.path.join(LIB, module))
        if name != "migration" and name not in ALLOWED
        and OPTIONAL.get(name, ("",))[0] != module
    ]
    assert not bad, "imports outside python3-core/-crypt/-json: " + ", ".join(bad)


def test_the_check_catches_forbidden_imports(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import os\ndef f():\n    import tempfile\n    from logging import x\n")
    assert [n for _, n in _imports(str(path)) if n not in ALLOWED] == ["tempfile", "logging"]


def test_allowlist_names_real_modules():
    import importlib.util

    missing = [m for m in sorted(ALLOWED) if m not in sys.builtin_module_names
               and importlib.util.find_spec(m) is None
               and m not in ("readline", "_sha2", "_sha256")]  # per version / build options
    assert not missing


def _guarded(path, name):
    """True when every import of `name` in `path` is in a try that catches ImportError."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    imports = [n for n in ast.walk(tree) if isinstance(n, ast.Import)
               and any(a.name.split(".")[0] == name for a in n.names)]
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id == "ImportError"
                for h in node.handlers):
            guarded.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return bool(imports) and all(id(n) in guarded for n in imports)


@pytest.mark.parametrize("name", sorted(OPTIONAL))
def test_optional_imports_are_guarded(name):
    module, _package = OPTIONAL[name]
    assert _guarded(os.path.join(LIB, module), name)
