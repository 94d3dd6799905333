"""The manifest v1 schema: the pydantic models of the YAML contract data teams write, its JSON
Schema (manifests/schema.json), and parse_manifest, which validates the mapping the guard
loaded against it strictly, reporting every problem of the document at once.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    create_model,
    field_validator,
)

from nst_core.batch.manifest.errors import ManifestError
from nst_core.batch.manifest.guard import load_mapping
from nst_core.engine.params import StyleParams
from nst_core.engine.params_parsing import format_validation_errors
from nst_core.engine.ranges import Weight

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
OUTPUT_FORMATS = ("jpg", "png", "webp")


def _patch_model() -> type[BaseModel]:
    """StyleParams with every field optional: what `defaults` and per-pair `params` hold.

    Field types and ranges come from StyleParams itself, so the two cannot drift; checks
    across fields run later, on the merged parameters.
    """
    fields: dict[str, Any] = {}  # create_model takes each as a keyword: (type, FieldInfo)
    for name, info in StyleParams.model_fields.items():
        assert info.annotation is not None  # pydantic sets it for every field of a model
        optional = info.annotation | None
        patched = info.merge_field_infos(info, default=None)
        fields[name] = (optional, patched)
    config = ConfigDict(extra="forbid", allow_inf_nan=False)
    return create_model("StyleParamsPatch", __config__=config, **fields)


StyleParamsPatch = _patch_model()
# `defaults` and per-pair `params` are checked field by field while the manifest is expanded,
# so their problems are reported together with missing files and empty globs.
ParamsPatch = Annotated[
    dict[str, Any], WithJsonSchema(StyleParamsPatch.model_json_schema(mode="validation"))
]


class StyleRef(BaseModel):
    """One style image of a blend."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    uri: str = Field(min_length=1, description="Path or s3:// URI; relative to the manifest.")
    # Bounded so that a blend's sum stays finite too: weights are divided by it.
    weight: Weight = Field(1.0, description="Blend weight; weights are normalised.")


def _as_style_refs(value: Any) -> Any:
    """`style: a.jpg` and `style: [a.jpg, {uri: b.jpg, weight: 0.3}]` both mean a list of refs.

    Normalising before validation keeps error paths plain (`pairs[0].style[1].weight`)
    instead of naming union branches.
    """
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        return [{"uri": item} if isinstance(item, str) else item for item in value]
    return value


StyleList = Annotated[
    list[StyleRef],
    BeforeValidator(_as_style_refs, json_schema_input_type=str | list[str | StyleRef]),
]


class PairSpec(BaseModel):
    """An explicit job: one content (or a glob) with one style or a weighted blend."""

    model_config = ConfigDict(extra="forbid")
    content: str = Field(min_length=1, description="Content image; a glob makes one job each.")
    style: StyleList = Field(min_length=1, description="A style, or a list of styles to blend.")
    params: ParamsPatch = Field(default_factory=dict, description="StyleParams for this pair.")


def _integer_version(value: Any) -> Any:
    """`version: true` and `version: 1.0` are not the integer 1, although Python finds them
    equal to it: only the integer is a version."""
    if isinstance(value, bool) or (isinstance(value, float) and value == 1):
        raise ValueError("Input should be the integer 1")
    return value


class Manifest(BaseModel):
    """Manifest version 1 (see manifests/schema.json and the README)."""

    model_config = ConfigDict(extra="forbid", title="nst-batch manifest v1")
    version: Annotated[Literal[1], BeforeValidator(_integer_version)]
    name: str | None = Field(
        None, pattern=NAME_PATTERN, description="Batch name; default: the manifest's file stem."
    )
    output: str = Field(
        min_length=1,
        description="Output folder or s3:// prefix; `{name}` is replaced by the batch name; "
        "relative paths resolve beside the manifest.",
    )
    format: Literal["jpg", "png", "webp"] = Field("jpg", description="Output image format.")
    defaults: ParamsPatch = Field(default_factory=dict, description="StyleParams for all jobs.")
    contents: list[str] = Field(
        default_factory=list, description="Content images (globs allowed): crossed with styles."
    )
    styles: list[str] = Field(
        default_factory=list, description="Style images (globs allowed): crossed with contents."
    )
    pairs: list[PairSpec] = Field(default_factory=list, description="Explicit extra jobs.")

    @field_validator("contents", "styles")
    @classmethod
    def _no_empty_entries(cls, uris: list[str]) -> list[str]:
        if any(not uri for uri in uris):
            raise ValueError("entries must not be empty")
        return uris


def patch_problems(patch: Any, where: str) -> list[str]:
    """Type and range problems of a `defaults` / `params` mapping, blamed on its keys."""
    try:
        StyleParamsPatch.model_validate(patch)
    except ValidationError as exc:
        label = lambda field: f"{where}.{field}" if field else where  # noqa: E731
        return format_validation_errors(exc, label)
    return []


def json_schema() -> dict:
    schema = Manifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def parse_manifest(data: bytes, source: str) -> Manifest:
    """Bytes of a manifest -> Manifest, or ManifestError listing every problem."""
    raw = load_mapping(data, source)
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        problems = format_validation_errors(exc, lambda f: f or "manifest")
        # The parameter mappings are checked during expansion; report theirs now too, so
        # one run shows every problem of the document.
        if isinstance(raw.get("defaults"), dict):
            problems += patch_problems(raw["defaults"], "defaults")
        pairs = raw.get("pairs")
        for i, pair in enumerate(pairs if isinstance(pairs, list) else []):
            if isinstance(pair, dict) and isinstance(pair.get("params"), dict):
                problems += patch_problems(pair["params"], f"pairs[{i}].params")
        raise ManifestError([f"{source}: {p}" for p in problems]) from None
