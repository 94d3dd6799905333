"""Manifest v1: the YAML contract data teams write, validated strictly and expanded into jobs.

Every problem is reported at once, each as `FILE: key.path[index]: what was expected, what was
found`. Parsing is defensive because manifests arrive from buckets: a size limit before
reading, a safe loader that rejects duplicate keys, and a budget on values and depth checked
on the parser's events before anything is built (an alias counts as all it expands to), so
that YAML alias bombs, deep nesting and megabytes of tiny values fail fast instead of
exhausting memory or time. URIs are checked before they are touched: no control characters,
no `.` or `..` segments in S3 keys, a manifest stored in S3 may not name local paths, and
with read and write roots (nst_core/roots.py) every input and the output must lie inside them.
A manifest from S3 or run with roots may name only the built-in VGG19 weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import yaml
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

from nst_core.batch import storage
from nst_core.batch.roots import Roots
from nst_core.engine.limits import Limits
from nst_core.engine.params import (
    BUILTIN_WEIGHTS,
    StyleParams,
    format_validation_errors,
    parse_params,
)
from nst_core.errors import NstError, ParamsError

MAX_MANIFEST_BYTES = 1 << 20
DEFAULT_MAX_JOBS = 10_000
# A legitimate manifest of 10,000 jobs is far below these; alias bombs blow straight past.
MAX_YAML_VALUES = 200_000
MAX_YAML_DEPTH = 32
MAX_URI_CHARS = 4096  # Linux's PATH_MAX; S3 keys stop at 1,024 bytes
MAX_PROBLEMS = 100  # listed; beyond that a count, so a hostile file cannot flood a log
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
OUTPUT_FORMATS = ("jpg", "png", "webp")


class ManifestError(NstError):
    """The manifest is invalid; `problems` holds one `FILE: key: reason` line per problem."""

    def __init__(self, problems: list[str]):
        problems = list(problems)
        if len(problems) > MAX_PROBLEMS:
            more = len(problems) - MAX_PROBLEMS
            problems = [*problems[:MAX_PROBLEMS], f"... and {more:,} more problems"]
        self.problems = problems
        super().__init__("\n".join(self.problems))


# -- the schema ---------------------------------------------------------------------------
def _patch_model() -> type[BaseModel]:
    """StyleParams with every field optional: what `defaults` and per-pair `params` hold.

    Field types and ranges come from StyleParams itself, so the two cannot drift; checks
    across fields run later, on the merged parameters.
    """
    fields = {}
    for name, info in StyleParams.model_fields.items():
        optional = info.annotation | None
        patched = info.merge_field_infos(info, default=None)
        fields[name] = (optional, patched)
    return create_model("StyleParamsPatch", __config__=ConfigDict(extra="forbid"), **fields)


StyleParamsPatch = _patch_model()
# `defaults` and per-pair `params` are checked field by field while the manifest is expanded,
# so their problems are reported together with missing files and empty globs.
ParamsPatch = Annotated[
    dict[str, Any], WithJsonSchema(StyleParamsPatch.model_json_schema(mode="validation"))
]


class StyleRef(BaseModel):
    """One style image of a blend."""

    model_config = ConfigDict(extra="forbid")
    uri: str = Field(min_length=1, description="Path or s3:// URI; relative to the manifest.")
    weight: float = Field(1.0, ge=0, description="Blend weight; weights are normalised.")


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


class Manifest(BaseModel):
    """Manifest version 1 (see manifests/schema.json and the README)."""

    model_config = ConfigDict(extra="forbid", title="nst-batch manifest v1")
    version: Literal[1]
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


# -- parsing ------------------------------------------------------------------------------
# libyaml when PyYAML was built with it: composing in C is several times faster, and libyaml
# refuses nesting deeper than 1,000 levels before Python would hit its recursion limit.
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_BaseLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one silently."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # SafeLoader reports unhashable keys itself
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_budget(text: str) -> str | None:
    """One pass over the parser's events, building nothing, with a budget on values and depth.

    An alias counts as the whole subtree it names, so alias bombs are measured as they would
    expand; a megabyte of one-character values is refused in a fraction of a second instead
    of after seconds of building Python objects.
    """
    loader = _StrictLoader(text)
    anchored: dict[str, tuple[int, int]] = {}  # anchor -> (values, height) of its subtree
    open_: list[list] = []  # per open collection: [anchor, values so far, tallest child]
    count = 0
    too_deep = f"nested deeper than {MAX_YAML_DEPTH} levels"

    def complete(values: int, height: int) -> str | None:
        """A whole node (of `values` values, `height` levels) inside the open collection."""
        if len(open_) + height > MAX_YAML_DEPTH:
            return too_deep
        if open_:
            open_[-1][1] += values
            open_[-1][2] = max(open_[-1][2], height)
        return None

    try:
        while loader.check_event():
            event = loader.get_event()
            values, problem = 0, None
            if isinstance(event, yaml.AliasEvent):
                if any(entry[0] == event.anchor for entry in open_):
                    return f"{too_deep} (a recursive alias)"
                values, height = anchored.get(event.anchor, (1, 1))  # undefined: composer says
                problem = complete(values, height)
            elif isinstance(event, yaml.ScalarEvent):
                values = 1
                if event.anchor:
                    anchored[event.anchor] = (1, 1)
                problem = complete(1, 1)
            elif isinstance(event, yaml.CollectionStartEvent):
                values = 1
                open_.append([event.anchor, 1, 0])
                problem = too_deep if len(open_) > MAX_YAML_DEPTH else None
            elif isinstance(event, yaml.CollectionEndEvent):
                anchor, subtree, tallest = open_.pop()
                if anchor:
                    anchored[anchor] = (subtree, tallest + 1)
                problem = complete(subtree, tallest + 1)
            count += values
            if count > MAX_YAML_VALUES:
                return f"expands to more than {MAX_YAML_VALUES:,} values (YAML aliases?)"
            if problem:
                return problem
    finally:
        loader.dispose()
    return None


def _load_yaml(text: str, source: str) -> Any:
    """Python objects from `text`, built only once its events fit the budget."""
    problem = _check_budget(text)
    if problem:
        raise ManifestError([f"{source}: {problem}"])
    loader = _StrictLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_manifest(data: bytes, source: str) -> Manifest:
    """Bytes of a manifest -> Manifest, or ManifestError listing every problem."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(
            [f"{source}: manifest is {len(data):,} bytes; the limit is {MAX_MANIFEST_BYTES:,}"]
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError([f"{source}: not UTF-8 text (byte {exc.start})"]) from None
    try:
        raw = _load_yaml(text, source)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or str(exc)
        if "maximum nesting depth" in problem:  # libyaml's own limit, far above ours
            problem = f"nested deeper than {MAX_YAML_DEPTH} levels"
        raise ManifestError([f"{source}: {where}{problem}"]) from None
    except yaml.YAMLError as exc:
        raise ManifestError([f"{source}: invalid YAML ({exc})"]) from None
    except RecursionError:
        raise ManifestError([f"{source}: nested too deeply"]) from None
    if not isinstance(raw, dict):
        found = "an empty file" if raw is None else type(raw).__name__
        raise ManifestError(
            [f"{source}: expected a mapping with version, output, ..., found {found}"]
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        problems = format_validation_errors(exc, lambda f: f or "manifest")
        # The parameter mappings are checked during expansion; report theirs now too, so
        # one run shows every problem of the document.
        if isinstance(raw.get("defaults"), dict):
            problems += patch_problems(raw["defaults"], "defaults")
        pairs = raw.get("pairs") if isinstance(raw.get("pairs"), list) else []
        for i, pair in enumerate(pairs):
            if isinstance(pair, dict) and isinstance(pair.get("params"), dict):
                problems += patch_problems(pair["params"], f"pairs[{i}].params")
        raise ManifestError([f"{source}: {p}" for p in problems]) from None


# -- resolution and expansion -------------------------------------------------------------
@dataclass(frozen=True)
class JobSpec:
    """One output to make, before its inputs are read: URIs and resolved parameters."""

    content: str
    styles: tuple[tuple[str, float], ...]  # (uri, blend weight)
    params: StyleParams
    source: str  # where in the manifest it came from, for messages: contents x styles / pairs[i]


@dataclass(frozen=True)
class Plan:
    """A validated manifest with every URI resolved and every glob expanded."""

    uri: str
    name: str
    output: str
    format: str
    jobs: list[JobSpec]
    n_contents: int
    n_styles: int
    n_pair_jobs: int
    sha256: str = ""  # of the manifest's bytes, as read

    def summary(self) -> str:
        """`4 jobs (2 contents x 2 styles + 0 pairs)`; when some pairs ask for the same job,
        `8 pairs, 5 distinct jobs (...)`, the count the run will do."""
        distinct = len({(j.content, j.styles, j.params) for j in self.jobs})
        count = (
            f"{len(self.jobs)} jobs"
            if distinct == len(self.jobs)
            else f"{len(self.jobs)} pairs, {distinct} distinct jobs"
        )
        return (
            f"{count} ({self.n_contents} contents x {self.n_styles} styles"
            f" + {self.n_pair_jobs} pairs)"
        )


def load_plan(
    uri: str,
    *,
    overrides: dict | None = None,
    overrides_label: str = "params",
    max_jobs: int = DEFAULT_MAX_JOBS,
    roots: Roots | None = None,
    expect_sha256: str | None = None,
) -> Plan:
    """Read, validate and expand the manifest at `uri` (local path or s3://).

    `roots` limits what the manifest may read and write; `expect_sha256` refuses a manifest
    whose bytes changed since someone validated it (the inbox pins what it checked).
    """
    storage.check_uri(uri)
    try:
        if not storage.is_s3(uri) and _special_file(uri):  # /dev/zero never ends, a FIFO blocks
            raise ManifestError([f"{uri}: not a regular file"])
        if storage.size(uri) > MAX_MANIFEST_BYTES:
            raise ManifestError(
                [f"{uri}: manifest is larger than the limit of {MAX_MANIFEST_BYTES:,} bytes"]
            )
        data = storage.read_bytes(uri)
    except storage.StorageError as exc:
        raise ManifestError([str(exc)]) from None
    sha = hashlib.sha256(data).hexdigest()
    if expect_sha256 and sha != expect_sha256:
        raise ManifestError(
            [f"{uri}: the manifest changed after it was validated; drop it again to run it"]
        )
    manifest = parse_manifest(data, uri)
    plan = expand(
        manifest,
        uri,
        overrides=overrides,
        overrides_label=overrides_label,
        max_jobs=max_jobs,
        roots=roots,
    )
    return dataclasses.replace(plan, sha256=sha)


def expand(
    manifest: Manifest,
    uri: str,
    *,
    overrides: dict | None = None,
    overrides_label: str = "params",
    max_jobs: int = DEFAULT_MAX_JOBS,
    roots: Roots | None = None,
) -> Plan:
    """Resolve URIs against the manifest's location, merge parameters, expand globs.

    Parameters merge in this order: built-in defaults, the manifest's `defaults`, the run's
    `overrides` (flow or CLI), then a pair's own `params`, the most specific. Every URI is
    checked against `roots` before it is touched.
    """
    roots = roots or Roots()
    limits = Limits.current()
    max_bytes = limits.max_input_bytes
    # A manifest from S3 or run with roots is confined: it may not name a weights file. The
    # run's overrides are the operator's own and may.
    confined = storage.is_s3(uri) or roots.restricted
    problems: list[str] = []
    base = storage.parent(uri)
    name = manifest.name or storage.stem(uri)
    if not re.match(NAME_PATTERN, name):
        problems.append(f"{uri}: name: the file stem {name!r} is not a valid batch name; set name")

    def checked(patch: dict, where: str, from_manifest: bool = True) -> dict | None:
        """Each field's type and range, blamed on the key the user wrote."""
        found = patch_problems(patch, where)
        weights = patch.get("weights")
        if not found and from_manifest and confined and weights not in (None, *BUILTIN_WEIGHTS):
            found = [_weights_problem(where)]
        problems.extend(f"{uri}: {p}" for p in found)
        return (
            None if found else StyleParamsPatch.model_validate(patch).model_dump(exclude_unset=True)
        )

    base_patch = checked(manifest.defaults, "defaults")
    override_patch = checked(overrides or {}, overrides_label, from_manifest=False)

    def params_for(patch: dict, where: str) -> StyleParams | None:
        """Merged parameters; checks across fields (layer weights vs layers) run here."""
        own = checked(patch, where) if patch else {}
        if own is None or base_patch is None or override_patch is None:
            return None
        try:
            return parse_params({**base_patch, **override_patch, **own}, where=where)
        except ParamsError as exc:
            problems.extend(f"{uri}: {p}" for p in exc.problems)
            return None

    defaults = params_for({}, "defaults")
    output = _resolve_output(manifest.output, name, base, uri, problems, roots)

    def resolve(entry: str, where: str) -> list[str]:
        try:
            storage.check_uri(entry)
            problem = _uri_problem(entry, uri)
            full = storage.join(base, entry) if problem is None else ""
            problem = problem or _key_problem(full)
            if not problem:
                check = roots.glob_problem if storage.has_glob(full) else roots.read_problem
                problem = check(full)
            if problem:
                problems.append(f"{uri}: {where}: {problem}")
                return []
            if storage.has_glob(full):
                listed = storage.glob_sized(full, limits.max_glob_entries)
                found = [(m, n) for m, n in listed if not _inside(m, output)]
                if not found:
                    problems.append(f"{uri}: {where}: glob {entry!r} matched no files")
            else:
                size = storage.size_if_exists(full)
                if size is None:
                    problems.append(f"{uri}: {where}: no such file {entry!r} (looked for {full})")
                found = [] if size is None else [(full, size)]
            # A link among glob matches may point out of the roots; any may be too big.
            bad = [roots.read_problem(m) for m, _ in found] if storage.has_glob(full) else []
            bad += [f"{m}: {storage.too_large(n, max_bytes)}" for m, n in found if n > max_bytes]
            problems.extend(f"{uri}: {where}: {p}" for p in bad if p)
            return [] if any(bad) else [m for m, _ in found]
        except storage.StorageError as exc:
            problems.append(f"{uri}: {where}: {exc.cause}")
            return []

    contents = _unique(
        u for i, e in enumerate(manifest.contents) for u in resolve(e, f"contents[{i}]")
    )
    styles = _unique(u for i, e in enumerate(manifest.styles) for u in resolve(e, f"styles[{i}]"))
    if manifest.contents and not manifest.styles:
        problems.append(f"{uri}: styles: contents are listed but no styles to cross them with")
    if manifest.styles and not manifest.contents:
        problems.append(f"{uri}: contents: styles are listed but no contents to cross them with")

    pair_jobs: list[JobSpec] = []
    for i, pair in enumerate(manifest.pairs):
        where = f"pairs[{i}]"
        params = params_for(pair.params, f"{where}.params")
        pair_contents = resolve(pair.content, f"{where}.content")
        refs = []
        if len(pair.style) > limits.max_blend_styles:
            problems.append(
                f"{uri}: {where}.style: a blend of {len(pair.style):,} styles; the limit is "
                f"{limits.max_blend_styles} (NST_MAX_BLEND_STYLES)"
            )
            continue  # not one of them is looked up
        for j, ref in enumerate(pair.style):
            found = resolve(ref.uri, f"{where}.style[{j}]")
            if len(found) > 1:
                problems.append(
                    f"{uri}: {where}.style[{j}]: a blend takes single images, "
                    f"but {ref.uri!r} matched {len(found)}"
                )
            refs.extend((f, ref.weight) for f in found[:1])
        if refs and sum(w for _, w in refs) <= 0:
            problems.append(f"{uri}: {where}.style: blend weights must not all be zero")
        if params is not None:
            pair_jobs.extend(JobSpec(c, tuple(refs), params, where) for c in pair_contents)

    total = len(contents) * len(styles) + len(pair_jobs)
    if total > max_jobs:
        problems.append(
            f"{uri}: expands to {total:,} jobs; the limit is {max_jobs:,} "
            "(split the manifest, or raise the limit)"
        )
    elif total == 0 and not problems:
        problems.append(f"{uri}: no jobs: list contents and styles, or pairs")
    if problems:
        raise ManifestError(problems)
    cross = [
        JobSpec(c, ((s, 1.0),), defaults, "contents x styles") for c in contents for s in styles
    ]
    return Plan(
        uri=uri,
        name=name,
        output=output,
        format=manifest.format,
        jobs=cross + pair_jobs,
        n_contents=len(contents),
        n_styles=len(styles),
        n_pair_jobs=len(pair_jobs),
    )


def _resolve_output(
    output: str, name: str, base: str, uri: str, problems: list[str], roots: Roots
) -> str:
    template = output.replace("{name}", name)
    if "{" in template or "}" in template:
        problems.append(
            f"{uri}: output: only the placeholder {{name}} is supported, got {output!r}"
        )
    if storage.has_glob(template):
        problems.append(f"{uri}: output: must be a folder or prefix, not a glob, got {output!r}")
    try:
        storage.check_uri(template)
        problem = _uri_problem(template, uri)
        full = storage.join(base, template).rstrip("/") if problem is None else template
    except storage.StorageError as exc:
        problems.append(f"{uri}: output: {exc.cause}")
        return template
    problem = problem or _key_problem(full) or roots.write_problem(full)
    if problem:
        problems.append(f"{uri}: output: {problem}")
    return full


def _weights_problem(where: str) -> str:
    """A weights file is loaded with torch on the worker: only its own user may name one."""
    return (
        f"{where}.weights: a manifest from S3 or run with read/write roots may name only the "
        f"built-in weights ({', '.join(BUILTIN_WEIGHTS)}); weights files are for local runs"
    )


def _uri_problem(entry: str, manifest: str) -> str | None:
    """Why `entry`, as the manifest writes it, may not be used; checked before it is touched.

    A manifest stored in S3 (dropped into a bucket inbox, say) reaches only S3: a local
    path in it would read or write the worker's own disk.
    """
    if len(entry) > MAX_URI_CHARS:
        return f"is {len(entry):,} characters long; the limit is {MAX_URI_CHARS:,}"
    control = _CONTROL.search(entry)
    if control:
        return f"contains the control character {control.group()!r}"
    if storage.is_s3(manifest) and not storage.is_s3(entry) and os.path.isabs(entry):
        return (
            "a manifest in S3 may name only s3:// URIs and paths relative to it, "
            f"not the local path {_short(entry)}"
        )
    return None


def _key_problem(uri: str) -> str | None:
    """S3 keys are names, not paths: AWS keeps `..` literally, SeaweedFS refuses such a key
    (InvalidRequest, so a batch would fail only when it writes) and tools that treat keys as
    paths resolve it out of the prefix. Refused here, before anything runs."""
    if storage.has_dot_segment(uri):
        return f"S3 keys must not contain '.' or '..' segments, got {_short(uri)}"
    return None


def _short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _special_file(path: str) -> bool:
    """A device, FIFO or socket: something that exists but is neither a file nor a folder."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False  # missing or unreadable: storage names the cause
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _inside(candidate: str, folder: str) -> bool:
    """Whether `candidate` lies under `folder`: earlier outputs never become inputs."""
    return candidate.startswith(folder.rstrip("/") + "/")


def _unique(items) -> list[str]:
    return list(dict.fromkeys(items))
