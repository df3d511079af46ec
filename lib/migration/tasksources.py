# SPDX-License-Identifier: MIT
"""The layer's Python sources a BitBake task runs, for the task's ``file-checksums``.

BitBake puts into a task's signature the source of the functions of :mod:`migration.bitbake`
(``addpylib`` scans its public functions), and nothing else of this package: a change of
``units.py`` (the gating drop-in's text), ``manifest.py`` (the fragment format) or of a constant
of ``bitbake.py`` would re-run nothing. The classes therefore list, in each task's
``file-checksums``, every module of the package that the task's entry point can import: the
modules imported (at module level or inside functions) by the entry function and by the
``bitbake.py`` functions it calls, and everything those modules import, transitively.

Computed from the sources with :mod:`ast` at parse time, so a new import needs no list to be
kept up to date; memoised per file and modification time.
"""

import ast
import functools
import os
import typing

PACKAGE = "migration"
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
ENTRY_MODULE = "bitbake"
"""The module whose functions the classes call."""


def _module_path(name: str) -> typing.Optional[str]:
    """The file of module ``name`` (dotted, relative to the package), or None if there is none."""
    base = os.path.join(PACKAGE_DIR, *name.split("."))
    for candidate in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(candidate):
            return candidate
    return None


def _package_of(current: str) -> typing.List[str]:
    """The package (as a list of names, [] for the top one) that relative imports in module
    ``current`` start from: the module itself when it is a package's ``__init__``."""
    if current == "__init__":
        return []
    path = _module_path(current) or ""
    parts = current.split(".")
    return parts if path.endswith("__init__.py") else parts[:-1]


def _imported(node: ast.AST, current: str) -> typing.Set[str]:
    """Package modules (dotted names relative to the package, "__init__" for the package
    itself) that the imports under ``node``, in module ``current``, load."""
    found: typing.Set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Import):
            for alias in sub.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    found.add(alias.name[len(PACKAGE) + 1 :] or "__init__")
            continue
        if not isinstance(sub, ast.ImportFrom):
            continue
        if sub.level:
            parts = _package_of(current)
            parts = parts[: len(parts) - (sub.level - 1)] + ([sub.module] if sub.module else [])
            base = ".".join(parts)
        elif sub.module == PACKAGE or (sub.module or "").startswith(PACKAGE + "."):
            base = (sub.module or "")[len(PACKAGE) + 1 :]
        else:
            continue
        found.add(base or "__init__")
        for alias in sub.names:
            # `from migration import state` loads a module; `from migration import __version__`
            # an attribute of the package (its __init__, added above).
            name = f"{base}.{alias.name}" if base else alias.name
            if _module_path(name):
                found.add(name)
    return {name for name in found if name == "__init__" or _module_path(name)}


@functools.lru_cache(maxsize=None)
def _parse(path: str, mtime_ns: int) -> ast.Module:
    with open(path, "rb") as f:
        return ast.parse(f.read(), filename=path)


def _tree(name: str) -> ast.Module:
    path = _module_path(name) or os.path.join(PACKAGE_DIR, "__init__.py")
    return _parse(path, os.stat(path).st_mtime_ns)


def _module_closure(names: typing.Iterable[str]) -> typing.Set[str]:
    """``names`` and every package module they import, transitively; the entry module's own
    imports are not followed (the caller picks those of the functions a task runs)."""
    todo = list(names)
    seen: typing.Set[str] = {ENTRY_MODULE}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(_imported(_tree(name), name) - seen)
    return seen


def _functions(tree: ast.Module) -> typing.Dict[str, ast.FunctionDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


def _called_functions(entry: str) -> typing.Set[str]:
    """``entry`` and the functions of the entry module it calls, transitively (by name)."""
    functions = _functions(_tree(ENTRY_MODULE))
    if entry not in functions:
        raise ValueError(f"{ENTRY_MODULE}.py has no function {entry}")
    todo, seen = [entry], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for sub in ast.walk(functions[name]):
            if isinstance(sub, ast.Name) and sub.id in functions:
                todo.append(sub.id)
    return seen


def task_modules(entry: str) -> typing.List[str]:
    """The package modules (dotted names) that ``bitbake.<entry>`` can import, sorted: the
    entry module itself (its constants are not in any signature), what it imports at module
    level, what ``entry`` and the functions it calls import, and their imports."""
    tree = _tree(ENTRY_MODULE)
    functions = _functions(tree)
    top_level = ast.Module(
        body=[n for n in tree.body if not isinstance(n, ast.FunctionDef)], type_ignores=[]
    )
    roots = {"__init__"} | _imported(top_level, ENTRY_MODULE)
    for name in _called_functions(entry):
        roots |= _imported(functions[name], ENTRY_MODULE)
    return sorted(_module_closure(roots - {ENTRY_MODULE}))


def file_checksums(*entries: str) -> str:
    """A ``file-checksums`` value (``path:True`` entries) of the files of :func:`task_modules`
    of every entry point a task runs."""
    names = {name for entry in entries for name in task_modules(entry)}
    paths = {_module_path(name) or os.path.join(PACKAGE_DIR, "__init__.py") for name in names}
    return " ".join(f"{path}:True" for path in sorted(paths))
