"""Settings: every `NST_*` environment variable, parsed in one place.

Each entry into the code parses them once (`Settings.from_env()`: the `nst` command, a flow
run, the make-up stack) and passes them, or the parts a callee needs, down; no other module
reads an `NST_*` variable, so what a function does depends on its arguments, not on the
environment of the process that happens to call it. The README's settings table is generated
from this model (`table()`) and a test keeps the two equal.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nst_core.engine.limits import Limits
from nst_core.errors import NstError

PREFIX = "NST_"
DEFAULT_CLAIM_LEASE_S = 180.0  # a job claim's lease, renewed every third of it
MAX_CLAIM_LEASE_S = 3600.0  # past this (plus clock skew), a claim was set by no run of ours
DEFAULT_BATCH_TIMEOUT_S = 24 * 3600.0  # a flow waits this long for its units, or its shards


class Settings(BaseModel):
    """What the environment may set. Field `x` is the variable `NST_X`."""

    # A bound of `inf` or `nan` is no bound, and later arithmetic on it overflows.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    max_input_mb: float = Field(
        Limits.max_input_mb, gt=0, description="Largest content or style object, MB."
    )
    max_input_megapixels: float = Field(
        Limits.max_input_megapixels,
        gt=0,
        description="Most decoded pixels of one content or style, megapixels.",
    )
    max_blend_styles: int = Field(Limits.max_blend_styles, gt=0, description="Styles in one blend.")
    max_scales: int = Field(Limits.max_scales, gt=0, description="Entries of `scales`.")
    max_style_side: int = Field(
        Limits.max_style_side, gt=0, description="A style image's side, `size` x `style_scale`, px."
    )
    max_evaluations: int = Field(
        Limits.max_evaluations, gt=0, description="Evaluations per job, `iterations` x scales."
    )
    max_history_rows: int = Field(
        Limits.max_history_rows, gt=0, description="Loss-history rows per job."
    )
    max_glob_entries: int = Field(
        Limits.max_glob_entries, gt=0, description="Entries one glob may list."
    )
    memory_budget_gb: float | None = Field(
        None,
        gt=0,
        description="Memory one device may use, GB; unset: 80% of a GPU's, or 4 GB on the CPU.",
    )
    claim_lease_s: float = Field(
        DEFAULT_CLAIM_LEASE_S,
        ge=1,
        le=MAX_CLAIM_LEASE_S,
        description="A job claim's lease, renewed every third of it.",
    )
    batch_timeout_s: float = Field(
        DEFAULT_BATCH_TIMEOUT_S, gt=0, description="How long a flow waits for its units, seconds."
    )
    task_runner: Literal["thread", "ray"] = Field(
        "thread", description="Where a flow's units run unless the flow parameter says."
    )
    ray_address: str = Field(
        "",
        description="The Ray cluster: unset or `local` starts a private one, `auto` joins "
        "this host's, or `ray://host:port`.",
    )
    ray_num_cpus: int | None = Field(None, gt=0, description="CPUs of a private Ray.")
    ray_temp_dir: str | None = Field(None, description="Session folder of a private Ray.")
    precision: Literal["fp32", "bf16"] | None = Field(
        None, description="What `precision: auto` means on every device, instead of timing."
    )
    s3_max_attempts: int = Field(
        5, ge=1, description="Retries of an S3 request after its first attempt (botocore's)."
    )
    s3_connect_timeout: float = Field(5.0, gt=0, description="S3 connect timeout, seconds.")
    s3_read_timeout: float = Field(30.0, gt=0, description="S3 read timeout, seconds.")
    debug: bool = Field(False, description="Show tracebacks of unexpected errors.")
    prefect_port: int = Field(
        4200, ge=1, le=65535, description="The port of `make up`'s Prefect server (the UI)."
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings `environ` (default: this process's environment) gives; NstError
        with one line per bad variable, naming it and what it takes."""
        environ = os.environ if environ is None else environ
        given = {}
        for field in cls.model_fields:
            raw = environ.get(env_name(field), "").strip()
            if raw:
                given[field] = raw
        try:
            return cls.model_validate(given)
        except ValidationError as exc:
            lines = []
            for error in exc.errors():
                field = str(error["loc"][0])
                message = error["msg"].removeprefix("Value error, ")
                message = message[:1].lower() + message[1:]
                lines.append(f"{env_name(field)}: {message}, got {given.get(field)!r}")
            raise NstError("\n".join(lines)) from None

    @property
    def limits(self) -> Limits:
        return Limits(**{name: getattr(self, name) for name in Limits.__dataclass_fields__})

    @property
    def memory_budget_bytes(self) -> int | None:
        return None if self.memory_budget_gb is None else int(self.memory_budget_gb * 1024**3)


def env_name(field: str) -> str:
    """The variable that sets a field: max_scales -> NST_MAX_SCALES."""
    return f"{PREFIX}{field.upper()}"


def table() -> str:
    """The README's settings table, one row per variable."""
    rows = ["| variable | default | what it sets |", "| --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        default = "unset" if field.default in (None, "") else f"`{field.default}`"
        rows.append(f"| `{env_name(name)}` | {default} | {field.description} |")
    return "\n".join(rows)
