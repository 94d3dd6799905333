"""StyleParams' fields as command-line options, made from the model itself: one option per
field, named like it with dashes, its help the field's description and its default the
model's. A field added to StyleParams is an option of `nst stylize` without touching the
command, so no option can go missing from it again.

Every option is taken as text (or, for a yes/no field, a flag) and handed to parse_params,
the same validation a manifest gets, so a bad value is one line naming the option.
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Annotated, Any, Literal

import typer
from pydantic.fields import FieldInfo

from nst_core.engine.params import StyleParams

_LIST = ","  # list fields (tuples) are given comma-separated: --style-layers relu1_1,relu2_1


def option_name(field: str) -> str:
    """`style_weight` -> `--style-weight` (and `` -> `options`, for a model-wide problem)."""
    return f"--{field.replace('_', '-')}" if field else "options"


def _kinds(annotation: Any) -> list[Any]:
    """The alternatives of a field's type, Annotated and None stripped: `int | 'auto'`."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _kinds(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [kind for arg in typing.get_args(annotation) for kind in _kinds(arg)]
    return [] if annotation is type(None) else [annotation]


def _choices(info: FieldInfo) -> tuple[str, ...]:
    """The words a field takes as they are (`auto`, `off`), from its Literal alternatives."""
    kinds = _kinds(info.annotation)
    return tuple(str(v) for k in kinds if typing.get_origin(k) is Literal for v in k.__args__)


def _is_flag(info: FieldInfo) -> bool:
    return _kinds(info.annotation) == [bool]


def _is_list(info: FieldInfo) -> bool:
    return any(typing.get_origin(kind) is tuple for kind in _kinds(info.annotation))


def _metavar(annotation: Any, field: str) -> str:
    """What the value looks like: `N`, `F`, `lbfgs|adam`, `N,..|auto`, `NAME,..`."""
    parts = []
    for kind in _kinds(annotation):
        if typing.get_origin(kind) is Literal:
            parts += [str(value) for value in kind.__args__]
        elif typing.get_origin(kind) is tuple:
            parts.append(_metavar(typing.get_args(kind)[0], "name") + _LIST + "..")
        else:
            parts.append({int: "N", float: "F"}.get(kind, field.upper()))
    return "|".join(parts)


def _default(info: FieldInfo) -> Any:
    """The model's default as the option's: text as a user would type it (`relu4_2,relu5_1`),
    a flag's as a bool, None where the field has none (its description says what then)."""
    value = info.default
    if value is None or isinstance(value, bool):
        return value
    return _LIST.join(map(str, value)) if isinstance(value, tuple) else str(value)


def _option(field: str, info: FieldInfo) -> Any:
    """The typer option of one field, its default and so its help's `[default: ...]` the
    model's own: parsing the default's text gives the model's default back."""
    name = option_name(field)
    # The model's own words, or for a field it documents with its choices alone, those.
    help_text = info.description or f"One of {', '.join(_choices(info))}."
    if _is_flag(info):
        return typer.Option(_default(info), f"{name}/--no-{name[2:]}", help=help_text)
    return typer.Option(
        _default(info),
        name,
        metavar=_metavar(info.annotation, field),
        help=help_text,
        show_default=info.default is not None,
    )


def parameters() -> list[inspect.Parameter]:
    """One keyword parameter per StyleParams field, for a command's signature."""
    return [
        inspect.Parameter(
            field,
            inspect.Parameter.KEYWORD_ONLY,
            default=_option(field, info),
            annotation=bool | None if _is_flag(info) else str | None,
        )
        for field, info in StyleParams.model_fields.items()
    ]


def given_values(options: dict[str, Any]) -> dict[str, Any]:
    """The options' values as parse_params takes them: list fields split at commas (`''` is
    the empty list) unless the value is one of the field's words (`--scales auto`); a field
    with no default and no value is left out."""
    values = {}
    for field, value in options.items():
        info = StyleParams.model_fields[field]
        if value is None:
            continue
        if _is_list(info) and value not in _choices(info):
            value = [part.strip() for part in value.split(_LIST) if part.strip()]
        values[field] = value
    return values
