"""A user's own components: modules imported before a config is validated, in every process.

A plugin is a module whose import registers components (``@ACTIVATIONS.register("silu")``).
It is named in a config's ``imports:`` list (or ``--import`` on the command line) as a module
name importable from the config file's folder, the current directory or the installed packages,
or as a path to a ``.py`` file relative to the config file. Installed packages register theirs
through the entry-point group ``vaebench.components``, loaded once per process.

:func:`resolve` turns each item into what any later process needs (an absolute file path, or the
name of an installed module), so a run folder's config.yaml names its plugins for good;
:func:`load` imports them (once per process) and is what workers, Ray tasks, the report and the
evaluation call before they build a model.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import re
import sys
import sysconfig
import traceback
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import ConfigError

ENTRY_POINT_GROUP = "vaebench.components"
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_loaded: dict[str, Any] = {}  # resolved item -> its module, in load order
_entry_points_done = False


def is_path(item: str) -> bool:
    """Whether a plugin item is a file (else a module name)."""
    return item.endswith(".py") or "/" in item or "\\" in item


def _module_file(folder: Path, name: str) -> Path | None:
    """The file of module ``name`` (dotted) under ``folder``, if that folder holds it."""
    base = folder.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate.resolve()
    return None


def resolve(items: Iterable[Any], base: str | Path | None = None, where: str = "imports") -> list[str]:
    """Each plugin item as a later process needs it: an absolute path to its file, or an installed
    module's name. Paths are relative to ``base`` (the config file's folder; default the current
    directory); module names are looked up in ``base``, then the current directory, then the
    installed packages."""
    folders = list(dict.fromkeys(Path(p).resolve() for p in (base or ".", ".")))
    out: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(f"{where}: each plugin must be a module name or a path to a .py file, got {item!r}")
        item = item.strip()
        if is_path(item):
            path = Path(item).expanduser()
            path = (path if path.is_absolute() else folders[0] / path).resolve()
            if path.is_dir() and (path / "__init__.py").is_file():
                path = path / "__init__.py"
            if not path.is_file():
                raise ConfigError(f"plugin {item!r} ({where}) not found: no file {path}; give a path relative "
                                  f"to the config file, or a module name")
            found = str(path)
        elif not _MODULE_NAME.match(item):
            raise ConfigError(f"plugin {item!r} ({where}) is neither a module name nor a path to a .py file")
        else:
            local = next((f for f in map(lambda d: _module_file(d, item), folders) if f), None)
            if local is not None:
                found = str(local)
            elif item in sys.modules or _installed(item):
                _refuse_library(item, where)
                found = item
            else:
                shown = " or ".join(str(f) for f in folders)
                raise ConfigError(f"plugin {item!r} ({where}) not found: no module {item} in {shown} or the "
                                  f"installed packages; give its module name or a path to its .py file")
        if found not in out:
            out.append(found)
    return out


def _library_folders() -> list[Path]:
    """The standard library's and site-packages' folders: what is installed, not the user's own code."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys(Path(paths[k]).resolve() for k in ("stdlib", "platstdlib", "purelib", "platlib")
                              if paths.get(k)))


def _refuse_library(name: str, where: str) -> None:
    """A plugin is the user's own module: a standard library or installed module (``os``) is refused,
    since a run folder's ``imports:`` would then run whatever that module does on import. Installed
    packages register components through the ``vaebench.components`` entry points instead."""
    top = name.split(".")[0]
    spec = None
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        pass
    origin = getattr(spec, "origin", None)
    builtin = top in sys.builtin_module_names or origin in (None, "built-in", "frozen")
    where_from = None if builtin else Path(origin).resolve()
    if builtin or top in getattr(sys, "stdlib_module_names", ()) or \
            any(where_from.is_relative_to(f) for f in _library_folders()):
        raise ConfigError(f"plugin {name!r} ({where}) is a standard library or installed module, not a plugin; "
                          f"name your own module or .py file (installed packages register theirs through the "
                          f"entry points {ENTRY_POINT_GROUP})")


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _source_files(item: str) -> tuple[Path, list[Path]]:
    """The folder and files a plugin's code is: its .py file, or every .py file of its package."""
    if is_path(item):
        path = Path(item)
    else:
        try:
            spec = importlib.util.find_spec(item)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.origin or not Path(spec.origin).is_file():
            return Path(), []
        path = Path(spec.origin)
    if path.name == "__init__.py":
        return path.parent, sorted(p for p in path.parent.rglob("*.py") if "__pycache__" not in p.parts)
    return path.parent, [path] if path.is_file() else []


def fingerprint(items: Iterable[str]) -> dict[str, str]:
    """Each resolved plugin's code as a short hash of its files' bytes (names relative to the
    plugin's folder, so a moved copy hashes the same); "missing" where no file is there."""
    out: dict[str, str] = {}
    for item in items:
        root, files = _source_files(item)
        h = hashlib.sha256()
        for f in files:
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
        out[item] = h.hexdigest()[:16] if files else "missing"
    return out


def code_id(record: dict[str, Any] | None) -> str:
    """A code record's short name for tables (``ls``/``load``'s ``code`` column): the hash of its
    plugins' hashes and vaebench's version; "unknown" for a run folder written before records."""
    if not isinstance(record, dict) or not isinstance(record.get("plugins"), dict):
        return "unknown"
    blob = json.dumps({"plugins": record["plugins"], "vaebench": record.get("vaebench")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def changed(record: dict[str, Any] | None, items: Iterable[str]) -> list[str]:
    """The plugins whose code differs from a run's record (none for a folder without one: unknown
    code is shown as such, not refused)."""
    if not isinstance(record, dict) or not isinstance(record.get("plugins"), dict):
        return []
    items = list(items)
    now = fingerprint(items)
    old = record["plugins"]
    return [i for i in dict.fromkeys([*old, *items]) if old.get(i) != now.get(i)]


def missing(items: Iterable[str]) -> list[str]:
    """The items this process has not imported (a run's plugins that reading it did not trust)."""
    return [i for i in items if i not in _loaded]


def load(items: Sequence[str] = ()) -> list[str]:
    """Import the installed packages' entry points (once per process) and each resolved item (once);
    return the items. A missing or failing plugin is one ConfigError line naming it."""
    load_entry_points()
    for item in items:
        if item not in _loaded:
            _loaded[item] = _import_file(Path(item)) if is_path(item) else _import(item, item)
    return list(items)


def loaded() -> list[str]:
    """The items this process has imported, in order (to hand on to worker processes)."""
    return list(_loaded)


def init_worker(items: Sequence[str], parent: int) -> None:
    """A pool worker's initializer (the report's drawers, eval -j's evaluators): ``items`` (the
    parent's loaded()), no Ctrl-C of its own, and it dies with the process ``parent``."""
    from .signals import die_with_parent

    die_with_parent(parent)
    load(items)


def _import_file(path: Path) -> Any:
    """Import a plugin file as a module of the package it sits in (a folder with __init__.py) or as a
    top-level module, its root folder appended to sys.path: as if run from that folder."""
    if not path.is_file():
        raise ConfigError(f"plugin {str(path)!r} not found (the config names it); restore the file or "
                          f"fix imports: in the config")
    parts = [] if path.name == "__init__.py" else [path.stem]
    root = path.parent
    while (root / "__init__.py").is_file():
        parts.insert(0, root.name)
        root = root.parent
    name = ".".join(parts)
    if str(root) not in sys.path:
        sys.path.append(str(root))
    module = _import(name, str(path))
    origin = getattr(module, "__file__", None)
    if origin is None or Path(origin).resolve() != path:
        raise ConfigError(f"plugin {str(path)!r} is shadowed by another module named {name!r} "
                          f"({origin or 'built in'}); rename the file")
    return module


def _import(name: str, shown: str) -> Any:
    try:
        return importlib.import_module(name)
    except ConfigError:
        raise
    except ModuleNotFoundError as e:
        if e.name and (name == e.name or name.startswith(e.name + ".")):
            raise ConfigError(f"plugin {shown!r} not found: no module named {e.name!r}; install it, or "
                              f"give a path to its .py file") from None
        raise ConfigError(f"plugin {shown!r} failed to import: {_why(e)}") from None
    except Exception as e:  # noqa: BLE001 - any error in a user's module is theirs to fix
        raise ConfigError(f"plugin {shown!r} failed to import: {_why(e)}") from None


def _why(e: BaseException) -> str:
    """The error and the last line of the user's code it came from (not vaebench's, not importlib's)."""
    ours = str(Path(__file__).resolve().parent)
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if "importlib" not in f.filename and not str(Path(f.filename).resolve()).startswith(ours)]
    at = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(e).__name__}: {e}{at}"


def load_entry_points() -> None:
    """Import every module an installed package names in the ``vaebench.components`` entry points."""
    global _entry_points_done
    if _entry_points_done:
        return
    _entry_points_done = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:  # noqa: BLE001
            _entry_points_done = False
            dist = getattr(getattr(ep, "dist", None), "name", None)
            owner = f" of the installed package {dist!r}" if dist else ""
            raise ConfigError(f"plugin {ep.value!r} (entry point {ep.name!r}{owner} in group "
                              f"{ENTRY_POINT_GROUP}) failed to import: {_why(e)}; fix or uninstall it") from None
