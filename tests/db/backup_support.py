"""Helpers shared by the backup, restore and info tests (no tests of its own)."""

from __future__ import annotations

import hashlib
import multiprocessing
import shutil
from pathlib import Path
from typing import Callable

from icn_mcp.db import Database
from icn_mcp.db.backup_files import manifest_path
from icn_mcp.db.sqlite.migrations import default_migrations_dir

SQLITE3_CLI = shutil.which("sqlite3")

#: A writer process: commits rows numbered 1, 2, 3, ... one transaction each, until
#: the stop file appears; prints how many it committed.
WRITER_SCRIPT = r"""
import os, sqlite3, sys
db, ready, stop = sys.argv[1:4]
conn = sqlite3.connect(db, isolation_level=None, timeout=30)
conn.execute("PRAGMA busy_timeout = 30000")
n = 0
while not os.path.exists(stop):
    n += 1
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO numbers (n, pad) VALUES (?, randomblob(200))", (n,))
    conn.execute("COMMIT")
    if n == 200:
        open(ready, "w").close()
print(n)
"""


def make_db(path: Path, *, rows: int = 0, migrations_dir: Path | None = None) -> Database:
    """A migrated database with a ``numbers`` table holding ``rows`` rows."""
    db = Database(path, migrations_dir=migrations_dir)
    with db.write_transaction() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS numbers (n INTEGER PRIMARY KEY, pad BLOB)")
        conn.executemany(
            "INSERT INTO numbers (n, pad) VALUES (?, randomblob(300))",
            [(i,) for i in range(1, rows + 1)],
        )
    return db


def file_state(db_path: Path) -> dict[str, object]:
    """SHA-256 of the database file and of its -wal (None when absent), and whether
    -shm exists. The -shm bytes are left out: every reader updates its read marks
    there, which changes no data."""
    state: dict[str, object] = {}
    for suffix in ("", "-wal"):
        path = Path(f"{db_path}{suffix}")
        state[suffix or "db"] = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
    state["-shm exists"] = Path(f"{db_path}-shm").exists()
    return state


def copy_migrations(target: Path) -> Path:
    """A private copy of the shipped migrations, to add files to."""
    target.mkdir(parents=True, exist_ok=True)
    for source in default_migrations_dir().iterdir():
        if source.suffix == ".sql":
            shutil.copy(source, target / source.name)
    return target


def concurrent_keep_1_rounds(
    target: Callable[..., None],
    args: tuple[object, ...],
    *,
    workers: int,
    rounds: int,
    directory: Path,
    list_backups: Callable[[Path], list[Path]],
) -> None:
    """Run ``workers`` spawned processes ``target(*args, barrier, results)`` that make a
    keep=1 backup into ``directory`` together, ``rounds`` times (each puts ``(path,
    pruned)`` or ``("error", repr)`` on ``results`` and waits at the barrier before
    and after), and assert after every round: some backup is left, the round's newest
    one among them, no backup pruned one newer than itself; at the end every worker
    exited 0 and every backup left has its manifest."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(workers + 1)
    results = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, results)) for _ in range(workers)]
    for proc in procs:
        proc.start()
    empty_rounds, lost_newest, pruned_newer = 0, 0, []
    try:
        for _ in range(rounds):
            barrier.wait(timeout=120)  # go
            barrier.wait(timeout=120)  # all returned
            made = [results.get(timeout=10) for _ in range(workers)]
            assert all(path != "error" for path, _ in made), made
            pruned_newer += [(own, p) for own, pruned in made for p in pruned if Path(p).name > Path(own).name]
            empty_rounds += not list_backups(directory)
            newest = max(Path(path).name for path, _ in made)
            lost_newest += not (directory / newest).exists()
    finally:
        for proc in procs:
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
    assert empty_rounds == 0, f"{empty_rounds} of {rounds} rounds left no backup at all"
    assert lost_newest == 0, f"the newest backup of a round was pruned in {lost_newest} rounds"
    assert pruned_newer == [], "a backup pruned one newer than itself"
    assert all(proc.exitcode == 0 for proc in procs)
    assert all(manifest_path(p).exists() for p in list_backups(directory))
