"""Owner-only directories: the one way icn-mcp creates a directory.

``Path.mkdir(parents=True, mode=0o700)`` applies the mode to the last level only: the
parents it creates get ``0777`` minus the umask (``0755`` under umask 022, ``0777``
under umask 000), and a world-writable parent lets another user rename the leaf away
and put their own in its place. :func:`make_private_dirs` creates every missing level
``0700`` itself and leaves existing directories as they are.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PRIVATE_DIR_MODE", "make_private_dirs"]

PRIVATE_DIR_MODE = 0o700


def make_private_dirs(path: str | os.PathLike[str]) -> list[Path]:
    """Create ``path`` and any missing parents, each ``0700``; the levels it created.

    Existing levels are not touched (an operator's ``/srv`` stays as it is). A level
    another process creates at the same moment counts as existing. Raises
    ``OSError`` (``NotADirectoryError`` when a level is a file) like ``os.mkdir``.
    """
    target = Path(os.path.abspath(path))
    missing: list[Path] = []
    level = target
    while not os.path.isdir(level):
        missing.append(level)
        if level.parent == level:
            break
        level = level.parent
    created: list[Path] = []
    for directory in reversed(missing):
        try:
            os.mkdir(directory, PRIVATE_DIR_MODE)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise NotADirectoryError(f"not a directory: {directory}") from None
            continue  # made by another process just now
        # mkdir's mode is reduced by the umask (a umask of 0277 would leave 0500).
        os.chmod(directory, PRIVATE_DIR_MODE)
        created.append(directory)
    return created
