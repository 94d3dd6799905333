"""Which URIs a run may read and write: its read roots, write roots and reserved folders.

A manifest from an inbox is written by whoever can write the inbox prefix, while the worker
that runs it holds credentials for much more. Roots keep such a manifest in its lane: every
input must lie under a read root and the output under a write root, checked while the
manifest is resolved, before anything outside them is listed, read or stat'ed. Reserved
folders (an inbox and its control folders) are never outputs, whatever the roots say.

Roots are URI prefixes matched by whole path segments (`s3://b/team` covers `s3://b/team/x`
but not `s3://b/teamb/x`); local paths are compared after resolving symlinks, so a link
inside a root cannot lead out of it. Without roots a run is unrestricted, as a local run by
its own user should be.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from nst_core.batch import storage
from nst_core.errors import NstError


def canonical(uri: str) -> str:
    """`uri` as roots compare it: S3 without a trailing slash, local paths resolved."""
    uri = str(uri)
    if storage.is_s3(uri):
        return uri.rstrip("/")
    return os.path.realpath(uri)


def within(uri: str, root: str) -> bool:
    """Whether canonical `uri` is canonical `root` or lies under it, by whole segments."""
    return uri == root or uri.startswith(root.rstrip("/") + "/")


def _canonical_roots(uris: Iterable[str] | None, option: str) -> tuple[str, ...] | None:
    if uris is None:
        return None
    found = []
    for uri in uris:
        uri = str(uri).strip()
        if not uri:
            raise NstError(f"{option}: empty root; give a folder or an s3://bucket[/prefix]")
        try:
            storage.check_uri(uri)
        except storage.StorageError as exc:
            raise NstError(f"{option}: {exc}") from None
        if storage.has_glob(uri):
            raise NstError(f"{option}: {uri!r} is a glob; a root is a folder or an S3 prefix")
        if storage.has_dot_segment(uri):
            raise NstError(f"{option}: {uri!r} has a '.' or '..' segment")
        found.append(canonical(uri))
    return tuple(dict.fromkeys(found))


@dataclass(frozen=True)
class Roots:
    """Where a run may read and write; `None` means unrestricted."""

    read: tuple[str, ...] | None = None
    write: tuple[str, ...] | None = None
    reserved: tuple[str, ...] = ()  # folders no output may be, lie inside, or contain

    @classmethod
    def of(
        cls,
        read: Iterable[str] | None = None,
        write: Iterable[str] | None = None,
        reserved: Iterable[str] = (),
    ) -> Roots:
        """Roots from what a user or a deployment gave; NstError names a bad one."""
        return cls(
            read=_canonical_roots(read, "read roots"),
            write=_canonical_roots(write, "write roots"),
            reserved=tuple(canonical(uri) for uri in reserved),
        )

    @property
    def restricted(self) -> bool:
        return self.read is not None or self.write is not None

    def read_problem(self, uri: str) -> str | None:
        """Why the input `uri` may not be read, or None. Never touches storage for S3."""
        return _outside(uri, self.read, "read")

    def glob_problem(self, pattern: str) -> str | None:
        """Why the glob `pattern` may not be listed: its fixed part must lie under a read root,
        so the listing itself stays inside (the matches are checked again afterwards)."""
        if self.read is None:
            return None
        fixed = _fixed_part(pattern)
        if any(within(canonical(fixed), root) for root in self.read):
            return None
        return (
            f"glob {_quote(pattern)} would list {_quote(fixed)}, outside the read roots "
            f"({', '.join(self.read)}); start it under one of them"
        )

    def write_problem(self, uri: str) -> str | None:
        """Why `uri` may not be an output folder, or None."""
        problem = _outside(uri, self.write, "write")
        if problem:
            return problem
        folder = canonical(uri)
        for reserved in self.reserved:
            if within(folder, reserved) or within(reserved, folder):
                return (
                    f"{_quote(uri)} overlaps {reserved}, which the inbox keeps for itself; "
                    "write outputs to another folder"
                )
        return None


def _outside(uri: str, roots: tuple[str, ...] | None, kind: str) -> str | None:
    if roots is None:
        return None
    resolved = canonical(uri)
    if any(within(resolved, root) for root in roots):
        return None
    shown = _quote(uri) + ("" if resolved == str(uri).rstrip("/") else f" (resolves to {resolved})")
    return f"{shown} lies outside the {kind} roots ({', '.join(roots)})"


def _fixed_part(pattern: str) -> str:
    """The segments of a glob before its first wildcard: the folder its listing starts at."""
    scheme = storage.S3_PREFIX if storage.is_s3(pattern) else ""
    segments = pattern[len(scheme) :].split("/")
    fixed = []
    for segment in segments:
        if storage.has_glob(segment):
            break
        fixed.append(segment)
    joined = "/".join(fixed)
    if not scheme and not joined and pattern.startswith("/"):
        return "/"
    return scheme + joined if (scheme or joined) else "."


def _quote(text: str, limit: int = 120) -> str:
    text = str(text)
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")
