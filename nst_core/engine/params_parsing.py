"""StyleParams from plain values, with every problem reported as one line that names the
key the user typed (`defaults.size`, `pairs[0].params.size`, `--size`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import UnionType
from typing import Any, Union, get_origin

from pydantic import ValidationError

from nst_core.engine.limits import Limits
from nst_core.engine.params import StyleParams
from nst_core.engine.ranges import OutOfRange
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
    for err in _unions_joined(exc.errors()):
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


def _unions_joined(errors: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """A value a field of several kinds (`tile`: a number, `auto` or `off`) matches none of
    gets one error per kind, located at `tile.int`, `tile.literal[...]`: one problem, so one
    line at `tile` saying every kind it may be."""
    joined: list[Mapping[str, Any]] = []
    by_field: dict[str, dict[str, Any]] = {}
    for err in errors:
        loc = err["loc"]
        # (field, kind): the whole value failed that kind; deeper errors stay as they are.
        if not (len(loc) == 2 and all(isinstance(p, str) for p in loc) and _is_union(loc[0])):
            joined.append(err)
            continue
        field = str(loc[0])
        kind = err["msg"].removeprefix("Input should be ").split(", ")[0]
        if field in by_field:
            first = by_field[field]
            first["msg"] = f"{first['msg']} or {kind}"
            continue
        first = {"type": "union", "loc": (field,), "msg": f"Input should be {kind}"}
        first["input"] = err["input"]
        by_field[field] = first
        joined.append(first)
    return joined


def _is_union(field: str) -> bool:
    info = StyleParams.model_fields.get(field)
    return info is not None and get_origin(info.annotation) in (Union, UnionType)


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
