"""Expansion of a validated manifest into a Plan: parameters checked and merged, URIs resolved
through the Resolver, contents crossed with styles, explicit pairs and blends added, and the job
count bounded; every problem found on the way is reported together in one ManifestError.
A manifest from S3 or run with roots may name only the built-in VGG19 weights.
"""

from __future__ import annotations

import re

from nst_core.batch import storage
from nst_core.batch.manifest.errors import Problems
from nst_core.batch.manifest.plan import JobSpec, Plan
from nst_core.batch.manifest.resolve import Resolver
from nst_core.batch.manifest.schema import (
    NAME_PATTERN,
    Manifest,
    PairSpec,
    StyleParamsPatch,
    patch_problems,
)
from nst_core.batch.roots import Roots
from nst_core.engine.limits import Limits
from nst_core.engine.params import BUILTIN_WEIGHTS, StyleParams
from nst_core.engine.params_parsing import parse_params
from nst_core.errors import ParamsError

DEFAULT_MAX_JOBS = 10_000


def expand(
    manifest: Manifest,
    uri: str,
    *,
    overrides: dict | None = None,
    overrides_label: str = "params",
    max_jobs: int = DEFAULT_MAX_JOBS,
    roots: Roots | None = None,
    limits: Limits | None = None,
) -> Plan:
    """Resolve URIs against the manifest's location, merge parameters, expand globs.

    Parameters merge in this order: built-in defaults, the manifest's `defaults`, the run's
    `overrides` (flow or CLI), then a pair's own `params`, the most specific. Every URI is
    checked against `roots` before it is touched, and every cost against `limits` (the
    settings' bounds; default: the built-in ones).
    """
    roots = roots or Roots()
    limits = limits or Limits()
    # A manifest from S3 or run with roots is confined: it may not name a weights file. The
    # run's overrides are the operator's own and may.
    confined = storage.is_s3(uri) or roots.restricted
    problems = Problems(uri)
    name = manifest.name or storage.stem(uri)
    if not re.match(NAME_PATTERN, name):
        problems.add("name", f"the file stem {name!r} is not a valid batch name; set name")
    params = _Params(
        problems, confined, manifest.defaults, overrides or {}, overrides_label, limits
    )
    defaults = params.merged({}, "defaults")
    resolver = Resolver(uri, roots, limits, problems)
    output = resolver.output(manifest.output, name)
    contents = resolver.entries(manifest.contents, "contents")
    styles = resolver.entries(manifest.styles, "styles")
    if manifest.contents and not manifest.styles:
        problems.add("styles", "contents are listed but no styles to cross them with")
    if manifest.styles and not manifest.contents:
        problems.add("contents", "styles are listed but no contents to cross them with")
    pair_jobs: list[JobSpec] = []
    for i, pair in enumerate(manifest.pairs):
        pair_jobs += _pair_jobs(pair, f"pairs[{i}]", params, resolver, limits.max_blend_styles)
    _check_count(len(contents) * len(styles) + len(pair_jobs), max_jobs, problems)
    problems.raise_if_any()
    assert defaults is not None  # None only with a problem, raised just above
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


class _Params:
    """The manifest's parameter patches, each checked field by field, and their merging.

    `defaults` and the run's `overrides` are checked once, here; a pair's own `params` when
    its parameters are merged. Problems are blamed on the key the user wrote.
    """

    def __init__(
        self,
        problems: Problems,
        confined: bool,
        defaults: dict,
        overrides: dict,
        overrides_label: str,
        limits: Limits,
    ):
        self.problems = problems
        self.limits = limits
        self.confined = confined
        self.base = self.checked(defaults, "defaults")
        self.override = self.checked(overrides, overrides_label, from_manifest=False)

    def checked(self, patch: dict, where: str, from_manifest: bool = True) -> dict | None:
        """Each field's type and range, blamed on the key the user wrote."""
        found = patch_problems(patch, where)
        weights = patch.get("weights")
        if (
            not found
            and from_manifest
            and self.confined
            and weights not in (None, *BUILTIN_WEIGHTS)
        ):
            found = [_weights_problem(where)]
        self.problems.extend(found)
        return (
            None if found else StyleParamsPatch.model_validate(patch).model_dump(exclude_unset=True)
        )

    def merged(self, patch: dict, where: str) -> StyleParams | None:
        """Merged parameters; checks across fields (layer weights vs layers) run here."""
        own = self.checked(patch, where) if patch else {}
        if own is None or self.base is None or self.override is None:
            return None
        try:
            values = {**self.base, **self.override, **own}
            return parse_params(values, where=where, limits=self.limits)
        except ParamsError as exc:
            self.problems.extend(exc.problems)
            return None


def _pair_jobs(
    pair: PairSpec, where: str, params: _Params, resolver: Resolver, max_blend: int
) -> list[JobSpec]:
    """The jobs of one explicit pair (a glob content makes one each); none on a problem."""
    problems = resolver.problems
    merged = params.merged(pair.params, f"{where}.params")
    contents = resolver.entry(pair.content, f"{where}.content")
    if len(pair.style) > max_blend:
        problems.add(
            f"{where}.style",
            f"a blend of {len(pair.style):,} styles; the limit is "
            f"{max_blend} (NST_MAX_BLEND_STYLES)",
        )
        return []  # not one of them is looked up
    refs: list[tuple[str, float]] = []
    for j, ref in enumerate(pair.style):
        found = resolver.entry(ref.uri, f"{where}.style[{j}]")
        if len(found) > 1:
            problems.add(
                f"{where}.style[{j}]",
                f"a blend takes single images, but {ref.uri!r} matched {len(found)}",
            )
        refs.extend((f, ref.weight) for f in found[:1])
    if refs and sum(w for _, w in refs) <= 0:
        problems.add(f"{where}.style", "blend weights must not all be zero")
    if merged is None:
        return []
    return [JobSpec(c, tuple(refs), merged, where) for c in contents]


def _check_count(total: int, max_jobs: int, problems: Problems) -> None:
    """A batch too large to plan, or one with nothing to do (when nothing else is wrong)."""
    if total > max_jobs:
        problems.add(
            f"expands to {total:,} jobs; the limit is {max_jobs:,} "
            "(split the manifest, or raise the limit)"
        )
    elif total == 0 and not problems:
        problems.add("no jobs: list contents and styles, or pairs")


def _weights_problem(where: str) -> str:
    """A weights file is loaded with torch on the worker: only its own user may name one."""
    return (
        f"{where}.weights: a manifest from S3 or run with read/write roots may name only the "
        f"built-in weights ({', '.join(BUILTIN_WEIGHTS)}); weights files are for local runs"
    )
