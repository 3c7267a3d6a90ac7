"""Wait for a start signal file, then open (and so migrate) the database.

Usage: opener.py DB_PATH MIGRATIONS_DIR GO_FILE. Prints the versions this process
applied, as one line; exits 1 with the error on stderr if opening failed.
"""

import os
import sys
import time

from icn_mcp.db import Database

path, migrations_dir, go = sys.argv[1:4]
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.001)
with Database(path, migrations_dir=migrations_dir, migrate=False) as db:
    applied = db.migrate()
print(",".join(applied), flush=True)
