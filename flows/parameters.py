"""The style parameters a flow run may override, as a typed model for Prefect's run form.

`StyleOverrides` has every field of nst_core.engine.params.StyleParams, each optional, with
StyleParams' types, ranges and descriptions: the deployment's parameter schema (and so the
UI's form and the server's check of `-p params='{"iterations": 50}'`) shows what each one
is, and no second list of parameters can drift from the engine's. Only what a run sets
reaches the manifest (`overrides`); the checks that need the whole set (known layers, scales
within size, the cost bounds) run where the manifest is read, with the error that names
`params.FIELD`.
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, create_model

from nst_core.engine.params import StyleParams

# flows/runners.py's TASK_RUNNERS, as a type: the run form offers the two.
TaskRunnerName = Literal["thread", "ray"]
# A manifest's pinned bytes: the sha256 hex digest the validating side computed.
SHA256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]

# StyleParams leaves these to their names; a run form should still say what they choose.
_DESCRIBED_HERE = {
    "optimizer": "lbfgs (with a strong-Wolfe line search) or adam.",
    "init": "Where the optimisation starts: the content, seeded noise, or the first style.",
    "pooling": "VGG19's pooling layers: max (the network's own) or avg.",
    "precision": "auto (measured once per device), fp32 or bf16.",
}


def _optional(annotation: Any, metadata: list[Any]) -> Any:
    """`annotation` with its constraints, or None (not set)."""
    constrained = Annotated[(annotation, *metadata)] if metadata else annotation
    return constrained | None


def _accepts_none(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation)


_NULLABLE = frozenset(
    name for name, field in StyleParams.model_fields.items() if _accepts_none(field.annotation)
)

if TYPE_CHECKING:

    class StyleOverrides(BaseModel):
        """StyleParams' fields, each optional (built below)."""

else:
    StyleOverrides = create_model(
        "StyleOverrides",
        __doc__="Style parameters that override the manifest's defaults for this run (a "
        "pair's own params still win). Leave a field out to keep the manifest's value.",
        __config__=ConfigDict(extra="forbid", allow_inf_nan=False),
        **{
            name: (
                _optional(field.annotation, field.metadata),
                Field(default=None, description=field.description or _DESCRIBED_HERE[name]),
            )
            for name, field in StyleParams.model_fields.items()
        },
    )


def overrides(params: StyleOverrides | dict[str, Any] | None) -> dict[str, Any] | None:
    """The fields a run set, as the manifest loader takes them (None: nothing overridden).

    Only fields set count, so `{"scales": null}` still asks for `size` alone. A null for a
    field that cannot be null (a form that sends every field) means "not set" and is left out.
    """
    if params is None:
        return None
    model = params if isinstance(params, StyleOverrides) else StyleOverrides.model_validate(params)
    given = {
        name: value
        for name, value in model.model_dump(mode="json", exclude_unset=True).items()
        if value is not None or name in _NULLABLE
    }
    return given or None
