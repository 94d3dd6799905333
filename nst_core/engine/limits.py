"""Bounds on the work one manifest may ask for, each changeable by an environment variable.

A manifest dropped into an inbox is written by someone else, and even a team's own manifest
can ask for far more than it means to (a typo of a zero). Every cost a job has is bounded at
validation, so a runaway request fails with one line before anything is read or computed.
The README's "Bounds" table lists these; they are read from the environment when used.
"""

import os
from dataclasses import dataclass, fields

from nst_core.errors import NstError


@dataclass(frozen=True)
class Limits:
    """The bounds in force; `current()` reads them from the environment (NST_ + NAME)."""

    max_input_mb: float = 64  # one content or style object
    max_blend_styles: int = 16  # styles in one blend
    max_scales: int = 8  # entries of `scales`
    max_style_side: int = 8192  # a style image's longest side after style_scale, pixels
    max_evaluations: int = 100_000  # iterations x scales, per job
    max_history_rows: int = 10_000  # evaluations / history_every, per job
    max_glob_entries: int = 100_000  # entries one glob may list before it is stopped

    @property
    def max_input_bytes(self) -> int:
        return int(self.max_input_mb * 2**20)

    @classmethod
    def current(cls) -> "Limits":
        values = {}
        for field in fields(cls):
            name = env_name(field.name)
            raw = os.environ.get(name, "").strip()
            if not raw:
                continue
            try:
                value = field.type(raw)
            except ValueError:
                value = 0
            if value <= 0:
                raise NstError(f"{name}: expected a positive {field.type.__name__}, got {raw!r}")
            values[field.name] = value
        return cls(**values)


def env_name(field: str) -> str:
    """The environment variable that sets a bound: max_scales -> NST_MAX_SCALES."""
    return f"NST_{field.upper()}"
