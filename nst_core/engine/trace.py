"""What an optimisation reports besides its image: the losses it reached, its loss history
and how each scale ran. Records carry them as they are (README.md, "Records"), so their JSON
form is the record's: field order included, and nothing written that was not set."""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict

LOSS_NAMES = ("total", "content", "style", "tv")


class _Reported(BaseModel):
    # Readers keep what a later engine adds; what the engine made is not changed afterwards.
    model_config = ConfigDict(extra="allow", frozen=True)


class LossValues(_Reported):
    """One pair's losses at one point: the weighted total and its three parts."""

    total: float
    content: float
    style: float
    tv: float

    @classmethod
    def of(cls, values: list[float]) -> LossValues:
        """From values in LOSS_NAMES order."""
        return cls(**dict(zip(LOSS_NAMES, values, strict=True)))

    def finite(self) -> bool:
        return all(math.isfinite(getattr(self, name)) for name in LOSS_NAMES)


class HistoryRow(_Reported):
    """One recorded evaluation: its number over every scale, the scale's longer side, the
    wall seconds since the pairs started, and the losses there."""

    evaluation: int
    scale: int
    seconds: float
    total: float
    content: float
    style: float
    tv: float


class ScaleRun(_Reported):
    """How one scale ran: its longer side and, when it ran in tiles, their size, halo and
    number (left unset, and so out of the JSON, when it ran whole)."""

    scale: int
    tile: int | None = None
    halo: int | None = None
    tiles: int | None = None

    @property
    def tiled(self) -> bool:
        return self.tile is not None
