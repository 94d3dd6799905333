"""What the stack chooses once and keeps: its ports and its keys (HOME/stack-config.json).

The PostgreSQL cluster is created with its password, and users export the S3 keys into
their shells (`python -m tools.stack env`), so both stay the same from one `up` to the next;
so do the ports, which are picked free on the first `up`. The file is readable by its owner
only, and nothing in it reaches Prefect's database.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from tools.process_control import free_ports


class StackError(RuntimeError):
    """The stack cannot do what it was asked; the message says why and what to do."""


@dataclass(frozen=True)
class StackConfig:
    postgres_port: int
    postgres_password: str
    s3_ports: tuple[int, int, int, int, int]  # s3, master, volume, filer, admin
    s3_access_key: str
    s3_secret_key: str

    @classmethod
    def load_or_create(
        cls,
        path: Path,
        postgres_port: int | None = None,
        s3_ports: tuple[int, int, int, int, int] | None = None,
        avoid: set[int] | None = None,
    ) -> StackConfig:
        """The saved choices, with any port given here instead; new ones on a first run."""
        saved = json.loads(path.read_text()) if path.exists() else {}
        taken = set(avoid or ())
        if postgres_port is None:
            postgres_port = saved.get("postgres_port") or free_ports(1, avoid=taken)[0]
        taken.add(postgres_port)
        if s3_ports is None:
            chosen = saved.get("s3_ports") or free_ports(5, twins=True, avoid=taken)
            s3_ports = (chosen[0], chosen[1], chosen[2], chosen[3], chosen[4])
        config = cls(
            postgres_port=postgres_port,
            postgres_password=saved.get("postgres_password") or secrets.token_hex(16),
            s3_ports=s3_ports,
            s3_access_key=saved.get("s3_access_key") or "nst" + secrets.token_hex(6),
            s3_secret_key=saved.get("s3_secret_key") or secrets.token_hex(20),
        )
        if config.as_json() != saved:
            config.save(path)
        return config

    def as_json(self) -> dict[str, object]:
        return {**asdict(self), "s3_ports": list(self.s3_ports)}

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created owner-only, never world-readable even for a moment.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump(self.as_json(), file, indent=1)
