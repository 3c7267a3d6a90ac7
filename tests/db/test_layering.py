"""The persistence core's imports point one way (issue 10, "The seam").

``db/base.py`` and the backend-neutral modules beside it (``migration_files.py``,
``backup_files.py``, ...) are what both backends share; ``db/sqlite/`` and
``db/postgres/`` implement them and never import each other; ``db/process.py`` and
``db/__init__.py`` sit on top of both. Checked on the source with :mod:`ast`, imports
inside functions included, so a shortcut from one backend into the other cannot creep
back in unseen.
"""

from __future__ import annotations

import ast
from pathlib import Path
from types import ModuleType

import pytest

import icn_mcp.db.backup_files as backup_files
import icn_mcp.db.migration_files as migration_files
import icn_mcp.db.sqlite.backup as sqlite_backup
import icn_mcp.db.sqlite.migrations as sqlite_migrations

SRC = Path(__file__).resolve().parent.parent.parent / "src"
DB = SRC / "icn_mcp" / "db"
BACKENDS = ("icn_mcp.db.sqlite", "icn_mcp.db.postgres")
#: Modules of icn_mcp.db that sit on top of both backends (they choose one).
ABOVE_BACKENDS = ("icn_mcp.db", "icn_mcp.db.process")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    base = SRC.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(source: str, module: str, *, is_package: bool = False) -> list[tuple[str, int]]:
    """``(imported module, line)`` for every import in ``source``, anywhere in it.

    ``from package import name`` counts as importing ``package.name`` when that is a
    module, else as importing ``package`` (the name comes from its ``__init__``).
    """
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((sub if is_module(sub) else target, node.lineno))
    return found


def imports_under(folder: Path) -> dict[str, list[tuple[str, int]]]:
    modules = {}
    for path in sorted(folder.rglob("*.py")):
        name = module_name(path)
        modules[name] = imports_of(path.read_text("utf-8"), name, is_package=path.name == "__init__.py")
    assert modules, f"no modules found under {folder}"
    return modules


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(modules: dict[str, list[tuple[str, int]]], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        {
            f"{module}:{line} imports {target}"
            for module, found in modules.items()
            for target, line in found
            if any(within(target, f) for f in forbidden)
        }
    )


def test_the_checker_sees_every_kind_of_import() -> None:
    """The checks below can fail: direct, lazy, aliased and relative imports are all seen."""
    source = (
        "import icn_mcp.db.sqlite.backup\n"
        "from icn_mcp.db import migration_files as _m\n"
        "def f():\n"
        "    from icn_mcp.db.sqlite import migrations\n"
        "    from ..sqlite.backup import manifest_path\n"
        "    from icn_mcp.db import Database\n"
    )
    found = imports_of(source, "icn_mcp.db.postgres.info")
    assert found == [
        ("icn_mcp.db.sqlite.backup", 1),
        ("icn_mcp.db.migration_files", 2),
        ("icn_mcp.db.sqlite.migrations", 4),
        ("icn_mcp.db.sqlite.backup", 5),
        ("icn_mcp.db", 6),
    ]
    assert len(violations({"icn_mcp.db.postgres.info": found}, ("icn_mcp.db.sqlite",))) == 3


@pytest.mark.parametrize(("backend", "other"), [BACKENDS, BACKENDS[::-1]])
def test_a_backend_never_imports_the_other_one(backend: str, other: str) -> None:
    modules = imports_under(SRC.joinpath(*backend.split(".")))
    assert violations(modules, (other,)) == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_backend_imports_only_itself_and_the_neutral_modules(backend: str) -> None:
    """Not the facade (``icn_mcp.db`` re-exports the SQLite backend) nor process.py (it
    picks a backend): only its own package and the shared modules beside base.py."""
    modules = imports_under(SRC.joinpath(*backend.split(".")))
    wrong = [
        f"{module}:{line} imports {target}"
        for module, found in modules.items()
        for target, line in found
        if within(target, "icn_mcp.db")
        and not within(target, backend)
        and (target in ABOVE_BACKENDS or any(within(target, b) for b in BACKENDS))
    ]
    assert wrong == []


def test_the_neutral_modules_import_neither_backend() -> None:
    modules = {
        name: found
        for name, found in imports_under(DB).items()
        if name not in ABOVE_BACKENDS and not any(within(name, b) for b in BACKENDS)
    }
    assert {"icn_mcp.db.base", "icn_mcp.db.migration_files", "icn_mcp.db.backup_files"} <= set(modules)
    assert violations(modules, BACKENDS + ("icn_mcp.db.process",)) == []


@pytest.mark.parametrize("layer", ["store", "server"])
def test_the_store_and_the_server_use_no_backend_internals(layer: str) -> None:
    """They go through the contract (icn_mcp.db, db/base.py) and the neutral modules."""
    assert violations(imports_under(SRC / "icn_mcp" / layer), BACKENDS) == []


@pytest.mark.parametrize(
    ("backend_module", "neutral"),
    [(sqlite_migrations, migration_files), (sqlite_backup, backup_files)],
)
def test_the_sqlite_modules_still_export_the_moved_names(backend_module: ModuleType, neutral: ModuleType) -> None:
    """Existing ``from icn_mcp.db.sqlite.migrations import MigrationFile`` & co. keep
    working, and give the very same objects (one class, not a copy per backend)."""
    shared = set(neutral.__all__) & set(backend_module.__all__)
    assert shared
    for name in shared:
        assert getattr(backend_module, name) is getattr(neutral, name), name
