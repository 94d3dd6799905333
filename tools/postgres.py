"""The stack's PostgreSQL: Debian's server binaries, a cluster of its own, on 127.0.0.1.

Prefect's server keeps its state here rather than in SQLite, where a write that meets
another one answers 503 "database is locked" under load. PostgreSQL refuses to run as
root: as root, every server command runs as the `postgres` system user (Debian's package
creates it), with a folder that user owns; as anyone else, as that user. The cluster
listens on 127.0.0.1 only, with no Unix socket, and asks for a password (scram-sha-256)
from every client: a laptop's other users cannot read the stack's flow runs.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from nst_core.batch.processes import alive
from tools.process_control import stop_process, wait_gone

PG_ROOT = Path("/usr/lib/postgresql")
SERVER_USER = "postgres"  # the system user the server runs as when the stack runs as root
ROLE = DATABASE = "prefect"


class PostgresError(RuntimeError):
    """The stack's PostgreSQL cannot be set up, started or stopped; the message says why."""


def server_binaries(root: Path = PG_ROOT) -> Path:
    """The newest installed version's bin folder (initdb, pg_ctl, postgres, createdb)."""

    def version(folder: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", folder.parent.name))

    found = sorted((b for b in root.glob("*/bin") if (b / "pg_ctl").exists()), key=version)
    if not found:
        raise PostgresError(
            f"PostgreSQL's server binaries are not installed (no {root}/*/bin/pg_ctl): "
            "`make up` installs Debian's postgresql, or run apt-get install postgresql"
        )
    return found[-1]


def _run_as() -> list[str]:
    """The prefix that runs a server command as an unprivileged user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise PostgresError(
            f"PostgreSQL refuses to run as root and there is no `{SERVER_USER}` user to run "
            "it as: apt-get install postgresql creates one"
        ) from None
    return ["runuser", "-u", SERVER_USER, "--"]


@dataclass
class LocalPostgres:
    folder: Path  # owned by the server's user: the cluster (data/) and its log
    port: int
    password: str

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "postgres.log"

    @property
    def url(self) -> str:
        """What Prefect's server connects with (PREFECT_API_DATABASE_CONNECTION_URL)."""
        return (
            f"postgresql+asyncpg://{ROLE}:{quote(self.password, safe='')}"
            f"@127.0.0.1:{self.port}/{DATABASE}"
        )

    def _server_command(self, args: list[str], timeout: float = 120) -> str:
        bin_dir = server_binaries()
        # PG* variables of the caller's shell would steer the tools elsewhere.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        result = subprocess.run(
            [*_run_as(), str(bin_dir / args[0]), *args[1:]],
            cwd=self.folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,  # a server it starts is in no group of ours
        )
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise PostgresError(f"{args[0]} failed: {' / '.join(detail[-3:])} (log: {self.log})")
        return result.stdout

    def _client_command(self, args: list[str]) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGPASSWORD"] = self.password  # a client's environment, never a command line
        connect = ["-h", "127.0.0.1", "-p", str(self.port), "-U", ROLE]
        result = subprocess.run(
            [str(server_binaries() / args[0]), *connect, *args[1:]],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise PostgresError(f"{args[0]} failed: {result.stderr.strip()}")
        return result.stdout

    def _own_folder(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        if not _run_as():
            return
        account = pwd.getpwnam(SERVER_USER)
        os.chown(self.folder, account.pw_uid, account.pw_gid)
        self.folder.chmod(0o700)
        reach = subprocess.run([*_run_as(), "test", "-w", str(self.folder)], check=False)
        if reach.returncode != 0:
            raise PostgresError(
                f"PostgreSQL runs as the user {SERVER_USER}, who cannot reach {self.folder}: "
                "let others into every folder above it (chmod o+x), or give the stack "
                "another home"
            )

    def initialise(self) -> bool:
        """Create the cluster and its password-protected role once; True if it was new."""
        if (self.data / "PG_VERSION").exists():
            return False
        self._own_folder()
        password_file = self.folder / "initial-password"
        password_file.write_text(self.password + "\n")
        password_file.chmod(0o600)
        if _run_as():
            account = pwd.getpwnam(SERVER_USER)
            os.chown(password_file, account.pw_uid, account.pw_gid)
        try:
            self._server_command(
                [
                    "initdb",
                    f"--pgdata={self.data}",
                    f"--username={ROLE}",
                    f"--pwfile={password_file}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ]
            )
        finally:
            password_file.unlink(missing_ok=True)
        return True

    def pid(self) -> int | None:
        """The postmaster's PID while it runs (from its postmaster.pid)."""
        try:
            first = (self.data / "postmaster.pid").read_text().split("\n", 1)[0]
        except OSError:
            return None
        return int(first) if first.strip().isdigit() and alive(int(first)) else None

    def start(self, timeout: float = 60) -> int:
        """Start the cluster unless it runs; create Prefect's database if missing."""
        self.initialise()
        if self.pid() is None:
            options = (
                f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories=''"
            )
            self._server_command(
                [
                    "pg_ctl",
                    f"--pgdata={self.data}",
                    f"--log={self.log}",
                    f"--options={options}",
                    "--wait",
                    f"--timeout={int(timeout)}",
                    "start",
                ],
                timeout=timeout + 10,
            )
        query = f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"
        known = self._client_command(["psql", "-d", "postgres", "-tAc", query])
        if known.strip() != "1":
            self._client_command(["createdb", DATABASE])
        pid = self.pid()
        if pid is None:
            raise PostgresError(f"PostgreSQL did not stay up (log: {self.log})")
        return pid

    def stop(self, timeout: float = 30) -> bool:
        """A fast shutdown (pg_ctl); SIGKILL if that did not end it. True if it was running."""
        pid = self.pid()
        if pid is None:
            return False
        # A failed or slow pg_ctl is not the end of it: the PID is stopped below.
        with contextlib.suppress(PostgresError, subprocess.TimeoutExpired):
            self._server_command(
                ["pg_ctl", f"--pgdata={self.data}", "--mode=fast", "--wait", "stop"],
                timeout=timeout,
            )
        if not wait_gone([pid], timeout):
            stop_process(pid, timeout=5, group=False)
        return True
