"""Safe loading of untrusted YAML: manifests arrive from buckets, so their bytes are parsed
defensively. A size limit before reading, a safe loader that rejects duplicate keys, and a
budget on values and depth checked on the parser's events before anything is built (an alias
counts as all it expands to), so that YAML alias bombs, deep nesting and megabytes of tiny
values fail fast as a ManifestError instead of exhausting memory or time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

import yaml

from nst_core.batch.manifest.errors import ManifestError

MAX_MANIFEST_BYTES = 1 << 20
# A legitimate manifest of 10,000 jobs is far below these; alias bombs blow straight past.
MAX_YAML_VALUES = 200_000
MAX_YAML_DEPTH = 32

# libyaml when PyYAML was built with it: composing in C is several times faster, and libyaml
# refuses nesting deeper than 1,000 levels before Python would hit its recursion limit.
if TYPE_CHECKING:  # PyYAML has no type information: to mypy either loader is Any
    _BaseLoader: TypeAlias = yaml.SafeLoader
else:
    _BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


_MERGE_TAG = "tag:yaml.org,2002:merge"
_MERGE = object()  # a merge key (`<<`), unlike any key a document can construct


class _StrictLoader(_BaseLoader):
    """SafeLoader that refuses duplicate keys instead of keeping the last one silently.

    Merge keys (`<<: *shared`) work as in any YAML 1.1 loader: a mapping's own keys win over
    merged ones, which are therefore no duplicates. Aliases under `<<` count against the
    budget like any other, so merging is no way around it.
    """

    def __init__(self, stream: str):
        super().__init__(stream)
        # Mappings whose own keys were checked: merging rewrites a mapping's key list to hold
        # the merged keys too, and a mapping merged elsewhere may be flattened before it is
        # constructed, so each is checked once, before its first flattening.
        self._checked: set[int] = set()

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        if id(node) not in self._checked:
            self._checked.add(id(node))
            self._refuse_duplicates(node)
        super().flatten_mapping(node)

    def _refuse_duplicates(self, node: yaml.MappingNode) -> None:
        seen = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # SafeLoader reports unhashable keys itself
            merge = key_node.tag == _MERGE_TAG
            key = _MERGE if merge else self.construct_object(key_node)
            if key in seen:
                shown = "<<" if merge else repr(key)
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {shown}", key_node.start_mark
                )
            seen.add(key)


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


def load_mapping(data: bytes, source: str) -> dict:
    """Bytes of an untrusted manifest -> the mapping it holds, or ManifestError saying why not."""
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
    return raw
