"""Take the write lock (BEGIN IMMEDIATE), print "locked", hold it HOLD_S seconds, commit.

Just before the commit it prints "releasing <epoch seconds>": no other writer can
have the lock before that moment.

Usage: write_locker.py DB_PATH HOLD_S
"""

import sqlite3
import sys
import time

conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("CREATE TABLE IF NOT EXISTS locker_marks (at REAL)")
conn.execute("INSERT INTO locker_marks VALUES (?)", (time.time(),))
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
print(f"releasing {time.time()!r}", flush=True)
conn.execute("COMMIT")
print("released", flush=True)
