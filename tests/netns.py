"""Many hosts on one machine: network namespaces on a bridge, and a PostgreSQL they share.

``HostNetwork`` makes a bridge in the root namespace with the first address of a free
private /24 (``10.213.N.0/24``) and one network namespace per host, each joined to
the bridge by a veth pair and given its own address on the subnet. ``cut(host)`` sets
the root end of a host's veth down: the host loses the bridge (PostgreSQL, clients in
the root namespace) while processes inside it still reach each other.
``PrivatePostgres`` runs a throwaway PostgreSQL cluster in a temporary directory that
listens on the bridge address only, with trust authentication for the subnet.

Both need root (``ip netns``, ``runuser``); :func:`netns_unavailable` and
:func:`private_postgres_unavailable` say why not, for a skip with the reason. Every
name carries a random suffix, so runs at the same time never meet, and everything made
is removed on exit, also after a failure.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

#: The private range the tests take a free /24 from.
SUBNET_PREFIX = "10.213"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_OS_USER = "postgres"
PG_START_TIMEOUT_S = 60


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    probe = f"icnprobe{secrets.token_hex(3)}"
    added = _run("ip", "netns", "add", probe, check=False)
    if added.returncode != 0:
        return f"ip netns add failed: {added.stderr.strip()}"
    _run("ip", "netns", "del", probe, check=False)
    return None


def private_postgres_unavailable() -> str | None:
    """Why a private PostgreSQL cluster cannot be started here, or None when it can."""
    for tool in ("initdb", "pg_ctl"):
        if not (PG_BIN / tool).is_file():
            return f"{PG_BIN / tool} is missing (Debian: apt-get install postgresql-15)"
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        return f"a private PostgreSQL runs as user {PG_OS_USER!r} through runuser, which needs root"
    if _run("id", "-u", PG_OS_USER, check=False).returncode != 0:
        return f"there is no user {PG_OS_USER!r} to run initdb as"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed: pip install 'icn-mcp[postgres]'"
    return None


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.213.N.0/24 that no interface of the root namespace has an address in."""
    used = _run("ip", "-o", "-4", "addr", "show").stdout
    taken = {int(n) for n in re.findall(rf"inet {re.escape(SUBNET_PREFIX)}\.(\d+)\.", used)}
    free = [n for n in range(256) if n not in taken]
    if not free:
        raise RuntimeError(f"every {SUBNET_PREFIX}.N.0/24 is in use")
    return ipaddress.IPv4Network(f"{SUBNET_PREFIX}.{secrets.choice(free)}.0/24")


class _Made:
    """A context manager that makes something on entry (``_make``) and removes all of
    it on exit (``close``), also when making it failed half-way."""

    def _make(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self._make()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@dataclass
class Host:
    """One simulated machine: a namespace, its address, the root end of its link."""

    name: str
    namespace: str
    address: str
    root_veth: str
    inner_veth: str

    def exec_prefix(self) -> list[str]:
        """Prefix a command with this to run it inside the host's namespace."""
        return ["ip", "netns", "exec", self.namespace]


@dataclass
class HostNetwork(_Made):
    """A bridge in the root namespace and ``count`` hosts on it (a context manager)."""

    count: int
    suffix: str = field(default_factory=lambda: secrets.token_hex(2))
    subnet: ipaddress.IPv4Network = field(default_factory=_free_subnet)
    hosts: list[Host] = field(default_factory=list)
    bridge: str = ""

    @property
    def bridge_address(self) -> str:
        """The root namespace's address on the subnet (where PostgreSQL listens)."""
        return str(self.subnet.network_address + 1)

    def _make(self) -> None:
        # Interface names are at most 15 characters: "icnbr" + 4 and "icn" + 4 + "h1r".
        self.bridge = f"icnbr{self.suffix}"
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.bridge_address}/{self.subnet.prefixlen}", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for n in range(1, self.count + 1):
            host = Host(
                name=f"h{n}",
                namespace=f"icn{self.suffix}h{n}",
                address=str(self.subnet.network_address + 10 + n),
                root_veth=f"icn{self.suffix}h{n}r",
                inner_veth=f"icn{self.suffix}h{n}n",
            )
            self.hosts.append(host)
            _run("ip", "netns", "add", host.namespace)
            _run("ip", "link", "add", host.root_veth, "type", "veth", "peer", "name", host.inner_veth)
            _run("ip", "link", "set", host.inner_veth, "netns", host.namespace)
            _run("ip", "link", "set", host.root_veth, "master", self.bridge)
            _run("ip", "link", "set", host.root_veth, "up")
            inside = host.exec_prefix()
            _run(*inside, "ip", "link", "set", "lo", "up")
            _run(*inside, "ip", "addr", "add", f"{host.address}/{self.subnet.prefixlen}", "dev", host.inner_veth)
            _run(*inside, "ip", "link", "set", host.inner_veth, "up")

    def cut(self, host: Host) -> None:
        """Unplug the host: its link to the bridge goes down (the inside end stays up)."""
        _run("ip", "link", "set", host.root_veth, "down")

    def restore(self, host: Host) -> None:
        """Plug the host back in."""
        _run("ip", "link", "set", host.root_veth, "up")

    def close(self) -> None:
        """Delete every namespace, veth and the bridge this network made (idempotent).

        Processes still inside a namespace (started by the test, whatever killed it)
        are killed first: a namespace with processes outlives ``ip netns del``.
        """
        for host in self.hosts:
            pids = _run("ip", "netns", "pids", host.namespace, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _run("ip", "netns", "del", host.namespace, check=False)
            # Deleting the namespace destroys the pair; this is for a half-made host.
            _run("ip", "link", "del", host.root_veth, check=False)
        if self.bridge:
            _run("ip", "link", "del", self.bridge, check=False)
        self.hosts = []
        self.bridge = ""


def free_port(address: str) -> int:
    """A TCP port nothing listens on at ``address`` (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


class PrivatePostgres(_Made):
    """A throwaway PostgreSQL 15 cluster listening on ``address`` (a context manager).

    initdb refuses to run as root, so every server command runs as ``postgres``
    through ``runuser``; the cluster lives in a temporary directory that user owns.
    Clients on ``trust_subnet`` connect as ``postgres`` without a password.
    """

    def __init__(self, address: str, trust_subnet: str) -> None:
        self.address = address
        self.trust_subnet = trust_subnet
        self.port = 0
        self.directory: Path | None = None

    @property
    def data_dir(self) -> Path:
        assert self.directory is not None
        return self.directory / "data"

    @property
    def log_file(self) -> Path:
        assert self.directory is not None
        return self.directory / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{PG_OS_USER}@{self.address}:{self.port}/{database}"

    def _as_postgres(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run("runuser", "-u", PG_OS_USER, "--", *args, check=check)

    def _make(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="icn-mcp-pg-"))
        shutil.chown(self.directory, PG_OS_USER, PG_OS_USER)
        # --no-sync and fsync=off: this cluster is thrown away and never crashed; the
        # tests that use it are about hosts and links, not about PostgreSQL's disk.
        self._as_postgres(
            str(PG_BIN / "initdb"), "-D", str(self.data_dir), "-U", PG_OS_USER, "--auth=trust", "--no-sync"
        )
        with (self.data_dir / "pg_hba.conf").open("a", encoding="utf-8") as hba:
            hba.write(f"host all all {self.trust_subnet} trust\n")
        self.port = free_port(self.address)
        options = " ".join(
            [
                f"-c listen_addresses={self.address}",
                f"-c port={self.port}",
                f"-c unix_socket_directories={self.directory}",
                "-c fsync=off",
                "-c max_connections=200",
            ]
        )
        self._as_postgres(
            str(PG_BIN / "pg_ctl"),
            "start",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-w",
            "-t",
            str(PG_START_TIMEOUT_S),
            "-o",
            options,
        )

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name``; its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log_tail(self, lines: int = 20) -> str:
        if self.directory is None or not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        """Stop the cluster at once (no checkpoint needed) and delete its directory."""
        if self.directory is None:
            return
        if (self.data_dir / "postmaster.pid").exists():
            # pg_ctl waits until the server is gone.
            self._as_postgres(str(PG_BIN / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "immediate", check=False)
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None
