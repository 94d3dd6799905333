"""Execution: how pairs are stylised, as distinct from what they make.

A user's StyleParams may ask for a device, a tile size and where L-BFGS keeps its history;
the planner (nst_core/batch/units.py) decides what they become for each job, and the runner
names the device a unit got. Those decisions live here, never written back into the user's
StyleParams, so a record shows what was asked (`params`) apart from what was decided
(`execution`), and none of it enters the job key: the same objective and gradient, only
where and in what pieces they are computed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal, cast

from nst_core.engine.params import StyleParams

HistoryOn = Literal["device", "host"]
Precision = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class Execution:
    """Where and how pairs stylised together run: the device, the tile size for every
    scale larger than it (None: whole), and where L-BFGS keeps its curvature history."""

    device: str = "auto"
    tile: int | None = None
    history_on: HistoryOn = "device"
    # What `precision: auto` means for these pairs when the settings say (NST_PRECISION);
    # None: calibration's measured choice.
    precision: Precision | None = None

    @classmethod
    def asked(cls, params: StyleParams) -> Execution:
        """What `params` ask for before any planning: `auto` tiles nothing and keeps the
        history on the device, until the planner finds that does not fit."""
        return cls(
            device=params.device,
            tile=params.tile if isinstance(params.tile, int) else None,
            history_on="host" if params.lbfgs_history_on == "host" else "device",
        )

    def on(self, device: str, precision: str | None = None) -> Execution:
        """The same decisions on the device a unit was given (and with `auto` precision
        meaning `precision`, when the settings fix it)."""
        # `precision` comes from the settings' NST_PRECISION, which allows fp32 and bf16 only.
        chosen = cast("Precision | None", precision or self.precision)
        return replace(self, device=device, precision=chosen)

    def tile_size(self, size: tuple[int, int]) -> int | None:
        """The tile a scale of `size` (width, height) runs with, or None for whole."""
        if self.tile is not None and max(size) > self.tile:
            return self.tile
        return None

    def describe(self) -> dict:
        return {"device": self.device, "tile": self.tile, "history_on": self.history_on}
