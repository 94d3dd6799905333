"""Ranges of numbers: every number a job takes is finite and within stated bounds, and a
value outside is refused with the whole range in the message (`0 to 1e9`), not only the
bound it crossed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, ValidatorFunctionWrapHandler, WrapValidator

# The largest loss or blend weight. Real ones stay far below (strength's curve tops out at
# 1,000; Gatys-style recipes use up to 1e6), and at this bound the losses stay finite with
# room to spare: every weight at 1e9 gave totals under 1e16 (64 px test images, both losses,
# L-BFGS and Adam), where fp32 and bf16 end at 3e38. A sum of weights stays finite too (16
# blend styles, or every VGG19 layer: under 1e11).
MAX_WEIGHT = 1e9
# The pydantic errors of a number outside its Range, which Range restates with the range.
_RANGE_ERRORS = frozenset(
    ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number")
)


class OutOfRange(ValueError):
    """A number outside its Range; `allowed` states the range (`0 to 1e9`)."""

    def __init__(self, message: str, allowed: str):
        super().__init__(message)
        self.allowed = allowed


@dataclass(frozen=True)
class Range:
    """The finite range a number must lie in: `Annotated[float, Range(0, MAX_WEIGHT)]`.

    Its bounds are pydantic's own constraints (so the JSON Schema shows them), and a value
    outside, infinite or NaN is refused as OutOfRange, which states the whole range, so the
    message can name what is allowed and not only the bound that was crossed.
    """

    low: float
    high: float
    low_open: bool = False  # `low` itself is refused (a step size of 0 goes nowhere)
    high_open: bool = False

    @property
    def __is_annotated_types_grouped_metadata__(self) -> Literal[True]:
        # annotated-types' GroupedMetadata protocol, which pydantic unpacks into the items
        # below; structural, so nothing of annotated-types is imported.
        return True

    def __iter__(self) -> Iterator[object]:
        yield Field(gt=self.low) if self.low_open else Field(ge=self.low)
        yield Field(lt=self.high) if self.high_open else Field(le=self.high)
        yield WrapValidator(self._explained)

    def allowed(self) -> str:
        """`0 to 1e9`, `above 0, up to 10`, `0 up to but not including 1`."""
        low, high = _number(self.low), _number(self.high)
        if self.low_open and self.high_open:
            return f"between {low} and {high}, both excluded"
        if self.low_open:
            return f"above {low}, up to {high}"
        if self.high_open:
            return f"{low} up to but not including {high}"
        return f"{low} to {high}"

    def _explained(self, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            errors = exc.errors()
            if len(errors) != 1 or errors[0]["type"] not in _RANGE_ERRORS:
                raise
            # inf and NaN fail a bound test too; say what is really wrong with them.
            message = "Input should be a finite number" if _non_finite(value) else errors[0]["msg"]
            raise OutOfRange(message, self.allowed()) from None


def _non_finite(value: Any) -> bool:
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError, OverflowError):
        return False


def _number(value: float) -> str:
    """A bound as a person writes it: 8,192, 0.5, 1e9."""
    if isinstance(value, int) or (value.is_integer() and abs(value) < 1e6):
        return f"{int(value):,}"
    mantissa, _, exponent = f"{value:g}".partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


Weight = Annotated[float, Range(0, MAX_WEIGHT)]
