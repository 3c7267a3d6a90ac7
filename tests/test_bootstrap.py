"""scripts/bootstrap says what it is doing while it installs, and nothing otherwise (issue 9 item 24).

The first run of `scripts/icn-mcp` or `scripts/test` printed nothing for about a minute
while pip ran quietly. The real install needs the network and a minute, so these tests
run the real script against a stand-in interpreter: the one mocked boundary is Python's
`venv`/`pip`, replaced by a script that records its arguments and builds the layout they
would leave.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

FAKE_PYTHON = """#!/bin/sh
# Stand-in for python3 / .venv/bin/python: records each call, builds what venv leaves.
echo "$*" >> "{log}"
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
    mkdir -p "$3/bin"
    cp "$0" "$3/bin/python"
fi
exit 0
"""


def _checkout(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    shutil.copy2(REPO / "scripts" / "bootstrap", root / "scripts" / "bootstrap")
    shutil.copy2(REPO / "pyproject.toml", root / "pyproject.toml")
    log = tmp_path / "calls.log"
    fake = tmp_path / "python3"
    fake.write_text(FAKE_PYTHON.format(log=log))
    fake.chmod(0o755)
    return root, fake


def _bootstrap(root: Path, fake: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": str(fake)}
    return subprocess.run(
        [str(root / "scripts" / "bootstrap"), *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_the_first_run_says_once_what_it_installs_and_later_runs_are_silent(tmp_path: Path) -> None:
    root, fake = _checkout(tmp_path)
    first = _bootstrap(root, fake, "test")
    assert first.returncode == 0, first.stderr
    assert first.stdout == ""
    lines = first.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("icn-mcp: installing icn-mcp[test] and its dependencies into ")
    assert "about a minute" in lines[0]
    calls = (tmp_path / "calls.log").read_text()
    assert "-m venv" in calls and "-m pip install" in calls  # it really installed

    again = _bootstrap(root, fake, "test")
    assert again.returncode == 0 and again.stdout == "" and again.stderr == ""

    # new extras, or a changed pyproject.toml: installs again, and says so
    base = _bootstrap(root, fake)
    assert base.stderr.startswith("icn-mcp: installing icn-mcp and its dependencies")
    stamp = root / ".venv" / ".installed-test"
    os.utime(stamp, (1, 1))
    changed = _bootstrap(root, fake, "test")
    assert len(changed.stderr.splitlines()) == 1 and "installing icn-mcp[test]" in changed.stderr


def test_an_installed_checkout_prints_nothing() -> None:
    """The real .venv this suite runs in was installed by scripts/test: silence."""
    result = subprocess.run([str(REPO / "scripts" / "bootstrap"), "test"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
