"""Take an advisory lock and hold it until killed (or for HOLD_S seconds).

Usage: lock_holder.py DB_PATH_OR_URL NAME TTL_S WAIT_S HOLD_S (a postgresql:// URL
opens PostgreSQL). Prints "acquired <owner>"
and the acquisition time once it holds the lock, or "timeout <owner-of-holder>".
"""

import sys
import time

from icn_mcp.db import Database
from icn_mcp.errors import LockTimeout

path, name, ttl_s, wait_s, hold_s = sys.argv[1:6]
if path.startswith("postgresql://"):
    from icn_mcp.db.postgres import PostgresDatabase

    db = PostgresDatabase(path, pool_min=1, pool_max=2)
else:
    db = Database(path)
try:
    lease = db.advisory_lock(name, ttl_s=float(ttl_s), wait_s=float(wait_s))
except LockTimeout as exc:
    print(f"timeout {exc.owner}", flush=True)
    sys.exit(3)
print(f"acquired {lease.owner} {lease.acquired_at}", flush=True)
time.sleep(float(hold_s))
lease.release()
print("released", flush=True)
