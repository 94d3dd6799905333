"""StyleParams from plain values, with every problem reported as one line that names the
key the user typed (`defaults.size`, `pairs[0].params.size`, `--size`)."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import ValidationError

from nst_core.engine.limits import Limits
from nst_core.engine.params import OutOfRange, StyleParams
from nst_core.errors import ParamsError


def parse_params(
    values: dict,
    *,
    where: str = "params",
    base: StyleParams | None = None,
    label: Callable[[str], str] | None = None,
    limits: Limits | None = None,
) -> StyleParams:
    """StyleParams from plain values (over `base`), or ParamsError listing every problem,
    its costs checked against `limits` (the settings' bounds; default: the built-in ones).

    Each problem reads `KEY: message`, where KEY is `where.field` unless `label` maps field
    names to what the user typed (CLI options), so one function serves every entry point.
    """
    merged = {**(base.model_dump() if base else {}), **values}
    label = label or (lambda field: f"{where}.{field}" if field else where)
    try:
        params = StyleParams(**merged)
    except ValidationError as exc:
        raise ParamsError(format_validation_errors(exc, label)) from None
    over = (limits or Limits()).problems(params)
    if over:
        raise ParamsError([f"{label(field)}: {message}" for field, message in over])
    return params


def format_validation_errors(exc: ValidationError, label: Callable[[str], str]) -> list[str]:
    """One `key.path[index]: message, got VALUE` line per problem, ending in `(allowed: RANGE)`
    for a number outside its range; `label` names the top key."""
    problems = []
    for err in exc.errors():
        loc = list(err["loc"])
        head = label(str(loc.pop(0))) if loc and not isinstance(loc[0], int) else label("")
        key = head + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] != "extra_forbidden" and not isinstance(err.get("input"), dict | None):
            message += f", got {_short(err['input'])}"
        error = (err.get("ctx") or {}).get("error")
        if isinstance(error, OutOfRange):
            message += f" (allowed: {error.allowed})"
        problems.append(f"{key}: {message}")
    return problems


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
