"""Open a database without migrating, then migrate; print the versions this process applied.

Usage: migrator.py DB_PATH_OR_URL MIGRATIONS_DIR (a postgresql:// URL opens PostgreSQL).
"""

import sys

from icn_mcp.db import Database

target, migrations_dir = sys.argv[1:3]
if target.startswith("postgresql://"):
    from icn_mcp.db.postgres import PostgresDatabase

    db = PostgresDatabase(target, migrations_dir=migrations_dir, migrate=False, pool_min=0, pool_max=2)
else:
    db = Database(target, migrations_dir=migrations_dir, migrate=False)
print(" ".join(db.migrate()), flush=True)
db.close()
