"""Resolution of the URIs a manifest names: each is checked before it is touched (no control
characters, no name over 255 bytes, no `~`, no `.` or `..` segments in S3 keys, no local paths
from a manifest stored in S3, a valid glob, inside the read or write roots), then resolved
against the manifest's location, its globs expanded and its files sized, every problem going
to the manifest's Problems.

An entry whose only wildcard is `[`, that is a valid pattern and that names an existing file
is that file, so `photos/img[1].jpg` reads the file of that name; otherwise `[...]` is a set,
and `[[]` matches a literal `[`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from nst_core.batch import storage
from nst_core.batch.manifest.errors import Problems
from nst_core.batch.roots import Roots
from nst_core.engine.limits import Limits

MAX_URI_CHARS = 4096  # Linux's PATH_MAX; S3 keys stop at 1,024 bytes
# NAME_MAX on Linux (macOS and Windows stop at 255 characters): a longer name would validate
# and then fail at the first write. S3 keys have no such limit, but their names become local
# files (a gallery copied to disk, `aws s3 sync`), so they are held to it too.
MAX_NAME_BYTES = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Resolver:
    """Resolves the entries of the manifest at `uri` against its folder, within `roots`.

    Call `output` first: glob matches inside the output folder are never inputs.
    """

    def __init__(self, uri: str, roots: Roots, limits: Limits, problems: Problems):
        self.uri = uri
        self.base = storage.parent(uri)
        self.roots = roots
        self.limits = limits
        self.problems = problems
        self.output_folder = ""

    def output(self, output: str, name: str) -> str:
        """The output folder or prefix, `{name}` filled in; checked against the write roots."""
        template = output.replace("{name}", name)
        if "{" in template or "}" in template:
            self.problems.add(
                "output", f"only the placeholder {{name}} is supported, got {output!r}"
            )
        if storage.has_glob(template):
            self.problems.add("output", f"must be a folder or prefix, not a glob, got {output!r}")
        try:
            storage.check_uri(template)
            problem = uri_problem(template, self.uri)
            full = storage.join(self.base, template).rstrip("/") if problem is None else template
        except storage.StorageError as exc:
            self.problems.add("output", exc.cause)
            self.output_folder = template
            return template
        problem = problem or key_problem(full) or self.roots.write_problem(full)
        if problem:
            self.problems.add("output", problem)
        self.output_folder = full
        return full

    def entries(self, entries: Iterable[str], key: str) -> list[str]:
        """Every file that the list at `key` names, each once, in order."""
        return _unique(u for i, e in enumerate(entries) for u in self.entry(e, f"{key}[{i}]"))

    def entry(self, entry: str, where: str) -> list[str]:
        """The files one entry names (a glob, several); none when it has a problem."""
        try:
            full, glob, problem = self._located(entry)
            if problem:
                self.problems.add(where, problem)
                return []
            found = self._found(full, glob, entry, where)
            # A link among glob matches may point out of the roots; any may be too big.
            max_bytes = self.limits.max_input_bytes
            bad = [self.roots.read_problem(m) for m, _ in found] if glob else []
            bad += [f"{m}: {storage.too_large(n, max_bytes)}" for m, n in found if n > max_bytes]
            self.problems.extend((p for p in bad if p), where)
            return [] if any(bad) else [m for m, _ in found]
        except storage.StorageError as exc:
            self.problems.add(where, exc.cause)
            return []

    def _located(self, entry: str) -> tuple[str, bool, str | None]:
        """The entry resolved against the manifest's folder, whether it is a glob, and why
        it may not be read."""
        storage.check_uri(entry)
        problem = uri_problem(entry, self.uri)
        full = storage.join(self.base, entry) if problem is None else ""
        problem = problem or key_problem(full)
        if problem:
            return full, False, problem
        if storage.has_glob(full):
            # The pattern as written is checked before anything is probed, so a bad one
            # reads the same whatever exists; the full one, in case the manifest's folder
            # itself holds a `[`.
            problem = glob_problem(entry)
            if problem or not self._names_a_file(full):
                problem = problem or glob_problem(full) or self.roots.glob_problem(full)
                return full, True, problem
        return full, False, self.roots.read_problem(full)

    def _names_a_file(self, full: str) -> bool:
        """Whether a path whose only wildcard is `[` is an existing file of that very name
        (`img[1].jpg`): such a name is meant literally, however it would read as a glob.
        Probed only inside the read roots, so the answer tells nothing about outside them."""
        if "*" in full or "?" in full or self.roots.read_problem(full):
            return False
        return storage.size_if_exists(full) is not None

    def _found(self, full: str, glob: bool, entry: str, where: str) -> list[tuple[str, int]]:
        """(uri, size) of each file a checked entry names: glob matches, or the one file."""
        if glob:
            listed = storage.glob_sized(full, self.limits.max_glob_entries)
            found = [(m, n) for m, n in listed if not _inside(m, self.output_folder)]
            if not found:
                self.problems.add(where, f"glob {entry!r} matched no files")
            return found
        size = storage.size_if_exists(full)
        if size is None:
            self.problems.add(where, f"no such file {entry!r} (looked for {full})")
        return [] if size is None else [(full, size)]


def uri_problem(entry: str, manifest: str) -> str | None:
    """Why `entry`, as the manifest writes it, may not be used; checked before it is touched.

    A manifest stored in S3 (dropped into a bucket inbox, say) reaches only S3: a local
    path in it would read or write the worker's own disk.
    """
    if len(entry) > MAX_URI_CHARS:
        return f"is {len(entry):,} characters long; the limit is {MAX_URI_CHARS:,}"
    control = _CONTROL.search(entry)
    if control:
        return f"contains the control character {control.group()!r}"
    path = entry[len(storage.S3_PREFIX) :] if storage.is_s3(entry) else entry
    for segment in path.split("/"):
        size = len(segment.encode("utf-8", "surrogatepass"))
        if size > MAX_NAME_BYTES:
            return (
                f"the name {_short(segment, 40)} is {size:,} bytes; a file or folder name may "
                f"be at most {MAX_NAME_BYTES} bytes: shorten it"
            )
    # `~` would be the home of whoever runs the manifest (a worker's service account, a
    # container's root), not its author's: refused rather than expanded, so that a manifest
    # means one place wherever it runs.
    if not storage.is_s3(entry) and entry.split("/", 1)[0].startswith("~"):
        full = "s3:// URI" if storage.is_s3(manifest) else "path (/home/you/...)"
        return (
            f"{_short(entry)} starts with '~', which is not expanded in a manifest: write the "
            f"full {full} or a path relative to the manifest"
        )
    if storage.is_s3(manifest) and not storage.is_s3(entry) and os.path.isabs(entry):
        return (
            "a manifest in S3 may name only s3:// URIs and paths relative to it, "
            f"not the local path {_short(entry)}"
        )
    return None


def glob_problem(pattern: str) -> str | None:
    """Why `pattern` is no valid glob: a set like `[z-a]`. Checked here, before anything is
    listed, for local paths and S3 alike (both match with storage.glob_regex)."""
    scheme = storage.S3_PREFIX if storage.is_s3(pattern) else ""
    try:
        storage.glob_regex(pattern[len(scheme) :].split("/"))
    except re.error as exc:
        return (
            f"glob {_short(pattern)} is not a valid pattern ({exc.msg}): write a range in "
            "[...] low to high, as [a-z]; to match a literal '[', write [[]"
        )
    return None


def key_problem(uri: str) -> str | None:
    """S3 keys are names, not paths: AWS keeps `..` literally, SeaweedFS refuses such a key
    (InvalidRequest, so a batch would fail only when it writes) and tools that treat keys as
    paths resolve it out of the prefix. Refused here, before anything runs."""
    if storage.has_dot_segment(uri):
        return f"S3 keys must not contain '.' or '..' segments, got {_short(uri)}"
    return None


def _short(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _inside(candidate: str, folder: str) -> bool:
    """Whether `candidate` lies under `folder`: earlier outputs never become inputs."""
    return candidate.startswith(folder.rstrip("/") + "/")


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
