"""Increment a counter by read-then-write transactions from several threads, on "go".

Usage: counter_writer.py DB_PATH INCREMENTS THREADS. Prints "ready", waits for a line on
stdin, runs INCREMENTS increments on each of THREADS threads (each reads the value,
then writes value + 1: a lost update would show in the total), then prints one JSON
line: this process's database stats and each thread's busy timeout at the end.
"""

import json
import sys
import threading

from icn_mcp.db import Database

path, increments, threads_n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
db = Database(path)


def increment(conn):
    (value,) = conn.execute("SELECT value FROM counter").fetchone()
    conn.execute("UPDATE counter SET value = ?", (value + 1,))


timeouts = []


def run() -> None:
    for _ in range(increments):
        db.run_in_transaction(increment)
    timeouts.append(db.connection().execute("PRAGMA busy_timeout").fetchone()[0])


print("ready", flush=True)
sys.stdin.readline()
threads = [threading.Thread(target=run) for _ in range(threads_n)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps({"stats": db.get_stats(), "busy_timeouts": timeouts}), flush=True)
db.close()
