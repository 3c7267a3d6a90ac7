"""How long a restore holds the write lock: the wait other writers see (issue 3).

Restore takes the safety copy and replaces the content under one hold of the live
database's write lock, so that no acknowledged write is lost; writers wait meanwhile.
This measures that wait on a real database while a writer process commits one row
about every millisecond, next to the time of the restore itself.

    .venv/bin/python bench/bench_restore.py --path /tmp/icn-bench/bench.sqlite   # reuse bench_backup's
    .venv/bin/python bench/bench_restore.py --size-mb 200
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_backup  # noqa: E402  (the writer process and the database builder)
from icn_mcp.db import Database  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the database to build (default 1024)")
    parser.add_argument("--path", type=Path, help="use (or build once and keep) this database")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="icn-bench-restore-"))
    path = (args.path or work / "bench.sqlite").absolute()
    if not path.exists():
        bench_backup.build(path, args.size_mb)
    db = Database(path)
    db.connection().execute("CREATE TABLE IF NOT EXISTS ticks (id INTEGER PRIMARY KEY, at REAL)")
    (work / "backups").mkdir()
    backup = db.create_backup(work / "backups", check="quick")

    ready, stop, out = work / "writer.ready", work / "writer.stop", work / "writer.json"
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            bench_backup.WRITER,
            str(path),
            str(ready),
            str(stop),
            str(out),
            str(bench_backup.WRITER_INTERVAL_S),
        ]
    )
    while not ready.exists():
        time.sleep(0.01)
    time.sleep(0.5)
    started = time.monotonic()
    db.restore_from_backup(backup.path, backup_dir=work / "safety", check="quick")
    ended = time.monotonic()
    time.sleep(0.5)
    stop.touch()
    writer.wait()
    db.close()
    times = json.loads(out.read_text())
    waits = sorted((b - a for a, b in zip(times, times[1:], strict=False) if b > started and a < ended), reverse=True)
    print(
        f"restore of {backup.size_bytes / 2**20:.0f} MiB with a writer committing every "
        f"{bench_backup.WRITER_INTERVAL_S * 1000:.0f} ms: {ended - started:.2f} s"
    )
    print(
        f"writer's longest wait {waits[0]:.2f} s (next {waits[1]:.2f} s); writer exit status "
        f"{writer.returncode}; {len(times)} commits"
    )


if __name__ == "__main__":
    main()
