"""Bounds on the work one job may ask for.

A manifest dropped into an inbox is written by someone else, and even a team's own manifest
can ask for far more than it means to (a typo of a zero). Every cost a job has is bounded at
validation, so a runaway request fails with one line before anything is read or computed.
The bounds in force come from the settings (nst_core/settings.py: `NST_MAX_*`), handed to
whoever validates; a StyleParams on its own is valid or not whatever the environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nst_core.engine.params import StyleParams


@dataclass(frozen=True)
class Limits:
    """The bounds in force (defaults here; each is the setting NST_ + its upper-case name)."""

    max_input_mb: float = 64  # one content or style object
    # Decoded pixels of one input: a 50 MP camera photo and an 81 MP scan pass.
    max_input_megapixels: float = 100
    max_blend_styles: int = 16  # styles in one blend
    max_scales: int = 8  # entries of `scales`
    max_style_side: int = 8192  # a style image's longest side after style_scale, pixels
    max_evaluations: int = 100_000  # iterations x scales, per job
    max_history_rows: int = 10_000  # evaluations / history_every, per job
    max_glob_entries: int = 100_000  # entries one glob may list before it is stopped

    @property
    def max_input_bytes(self) -> int:
        return int(self.max_input_mb * 2**20)

    @property
    def max_input_pixels(self) -> int:
        return int(self.max_input_megapixels * 1e6)

    def problems(self, params: StyleParams) -> list[tuple[str, str]]:
        """(field, message) for each cost of `params` over its bound; field "" for the first
        of the costs that several fields decide together (a later one often follows from it:
        too many evaluations make too many history rows)."""
        found = []
        together = []
        if isinstance(params.scales, tuple) and len(params.scales) > self.max_scales:
            found.append(
                (
                    "scales",
                    f"at most {self.max_scales} scales (NST_MAX_SCALES); "
                    f"{len(params.scales):,} given",
                )
            )
        side = round(params.size * params.style_scale)
        if side > self.max_style_side:
            together.append(
                (
                    "",
                    f"size {params.size} x style_scale {params.style_scale:g} makes the style "
                    f"image {side:,} px; the limit is {self.max_style_side:,} (NST_MAX_STYLE_SIDE)",
                )
            )
        scales = len(params.schedule())
        evaluations = params.iterations * scales
        if evaluations > self.max_evaluations:
            together.append(
                (
                    "",
                    f"iterations {params.iterations:,} x {scales} scales is {evaluations:,} "
                    f"evaluations; the limit is {self.max_evaluations:,} per job "
                    "(NST_MAX_EVALUATIONS)",
                )
            )
        rows = evaluations // params.history_every
        if rows > self.max_history_rows:
            together.append(
                (
                    "",
                    f"history_every {params.history_every} records {rows:,} history rows; the "
                    f"limit is {self.max_history_rows:,} (NST_MAX_HISTORY_ROWS): raise "
                    "history_every",
                )
            )
        return found + together[:1]
