"""A throwaway PostgreSQL server for tests (Debian's ``postgresql`` package, no service).

``initdb`` in a fresh folder under the system temporary directory (outside pytest's private
folders, so that the ``postgres`` user can own it when the tests run as root), ``pg_ctl`` on a
free loopback port with trust authentication, stopped and removed afterwards. One server per
test session; each test gets its own database (``CREATE DATABASE``), cloned from a template
already at the schema head when it asks for one, so that a test costs milliseconds, not an
upgrade.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

SUPERUSER = "postgres"


def find_bin() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl`` (newest major version), or None."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True,
                            key=lambda p: int(Path(p).parent.name)):
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path and shutil.which("pg_ctl") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One PostgreSQL server in a temporary folder, on 127.0.0.1 and a free port."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="dicomnode-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:  # PostgreSQL refuses to run as root: the postgres user owns the folder
            os.chmod(self.root, 0o755)
            shutil.chown(self.root, SUPERUSER, SUPERUSER)
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
                  "-E", "UTF8", "--no-sync")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        if self.as_root:
            cmd = ["runuser", "-u", SUPERUSER, "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, cwd=self.root)

    def start(self) -> None:
        # fsync off: a test server's durability is not what is tested, and fsync is slow here.
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-o", opts, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, down_s: float = 0.0) -> None:
        """Stop (every connection is cut), wait ``down_s``, start again on the same port."""
        self.stop("immediate")
        time.sleep(down_s)
        self.start()

    def close(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def admin(self) -> psycopg.Connection:
        """An autocommit connection to the maintenance database, as the superuser."""
        return psycopg.connect(f"host=127.0.0.1 port={self.port} user={SUPERUSER} "
                               "dbname=postgres", autocommit=True)

    def create_database(self, *, template: str = "template0") -> str:
        """A new empty (or ``template``-cloned) database; returns its SQLAlchemy URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        name = url.rsplit("/", 1)[1]
        with self.admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def make_template(self, name: str) -> str:
        """An empty database meant to be upgraded once, then cloned (mark with ``seal``)."""
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def seal(self, name: str) -> None:
        """Mark ``name`` as a template (close its connections first: a copy needs none)."""
        with self.admin() as conn:
            conn.execute(f"ALTER DATABASE \"{name}\" WITH IS_TEMPLATE true")
