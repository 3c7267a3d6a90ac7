"""Commit numbered rows forever, printing each number after its COMMIT returned.

Usage: writer.py DB_PATH [START]. A line on stdout is an acknowledgement: that row is
committed. Used by the kill -9 durability test.
"""

import sys

from icn_mcp.db import Database

path = sys.argv[1]
start = int(sys.argv[2]) if len(sys.argv) > 2 else 1
db = Database(path)
db.run_in_transaction(lambda c: c.execute("CREATE TABLE IF NOT EXISTS numbers (n INTEGER PRIMARY KEY, pad BLOB)"))
print("ready", flush=True)
n = start
while True:
    db.run_in_transaction(lambda c, n=n: c.execute("INSERT INTO numbers (n, pad) VALUES (?, randomblob(200))", (n,)))
    sys.stdout.write(f"{n}\n")
    sys.stdout.flush()
    n += 1
