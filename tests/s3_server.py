"""A throwaway S3 server for tests: the stack's SeaweedFS (`tools/seaweed.py`, `weed mini` on
127.0.0.1) with free ports, random keys and a data folder of the test's own."""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tools.process_control import free_ports, stop_process
from tools.seaweed import LocalS3, topology

# Far more buckets than a test session creates (about 150), whatever the disk's free space.
VOLUME_SLOTS = 1000


@dataclass
class S3Server:
    local: LocalS3
    process: subprocess.Popen[bytes]

    @property
    def endpoint_url(self) -> str:
        return self.local.endpoint_url

    @property
    def access_key(self) -> str:
        return self.local.access_key

    @property
    def secret_key(self) -> str:
        return self.local.secret_key

    @property
    def ports(self) -> tuple[int, int, int, int, int]:
        return self.local.ports

    def restart(self, timeout: float = 30.0) -> S3Server:
        """Stop this server if it runs, then start a new one on the same data folder, ports
        and keys: the same endpoint and bucket contents, as after a storage outage."""
        self.stop()
        return S3Server(self.local, self.local.launch(timeout))

    def log(self) -> str:
        return self.local.log.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            stop_process(self.process.pid, timeout)
            self.process.wait()


def volume_slots(server: S3Server) -> int:
    """How many volumes the server may hold in all: each bucket takes at least one."""
    return int(topology(server.ports[1]).get("Max") or 0)


def start_s3_server(
    folder: Path,
    timeout: float = 30.0,
    *,
    access_key: str | None = None,
    secret_key: str | None = None,
) -> S3Server:
    """Start `weed mini` storing under `folder`, on free ports (each with its gRPC twin at
    +10000 free too) and with random keys unless given."""
    s3, master, volume, filer, admin = free_ports(5, twins=True)
    local = LocalS3(
        folder,
        (s3, master, volume, filer, admin),
        access_key or "nsttest" + secrets.token_hex(4),
        secret_key or secrets.token_hex(16),
        volume_slots=VOLUME_SLOTS,
        # Small volumes: a session's buckets are many and small.
        volume_size_mb=64,
    )
    return S3Server(local, local.launch(timeout))
