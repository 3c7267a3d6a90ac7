"""Hold nothing; on each line read from stdin, commit one UPDATE of counter and reply.

Usage: snapshot_writer.py DB_PATH. Used to create a write between another
connection's read and write (the SQLITE_BUSY_SNAPSHOT race).
"""

import sqlite3
import sys

conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA busy_timeout = 5000")
print("ready", flush=True)
for _line in sys.stdin:
    conn.execute("UPDATE counter SET value = value + 1")
    print("done", flush=True)
