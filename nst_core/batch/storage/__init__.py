"""Reading and writing bytes where users keep their images, local paths or s3://bucket/key:
this facade is every operation callers use, each taking a URI that is either a plain local path
or `s3://bucket/key`, dispatched to the local-disk backend (`local`) or the S3 one (`s3`);
nothing S3-specific lives outside this package. Permanent failures raise `StorageError`
("URI: cause"); transient S3 failures are retried by botocore itself; local writes are atomic.
Callers use the operations as attributes of this module (`storage.write_bytes(...)`), and so do
the operations here that build on others (`exists` and `glob_sized` ask `size_if_exists`, `glob`
asks `glob_sized`, a move across backends reads, writes and deletes), so replacing one of these
attributes (a test's spy) reaches every use of it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from types import ModuleType

from . import local, s3
from .errors import StorageError, check_size, redact, too_large
from .local import atomic_write
from .s3 import reset_clients, s3_client, translate
from .uris import (
    S3_PREFIX,
    check_uri,
    glob_regex,
    has_dot_segment,
    has_glob,
    is_s3,
    join,
    name,
    parent,
    stem,
)

__all__ = [
    "S3_PREFIX",
    "StorageError",
    "atomic_write",
    "check_uri",
    "delete",
    "exists",
    "glob",
    "glob_sized",
    "has_dot_segment",
    "has_glob",
    "is_s3",
    "join",
    "list_prefix",
    "move",
    "name",
    "parent",
    "read_bytes",
    "redact",
    "reset_clients",
    "s3_client",
    "size",
    "size_if_exists",
    "stem",
    "too_large",
    "write_bytes",
    "write_if_absent",
]


def _backend(uri: str) -> ModuleType:
    """The backend module for `uri`: `s3` for s3://bucket/key, `local` for anything else."""
    return s3 if is_s3(uri) else local


# --------------------------------------------------------------------------- bytes


def read_bytes(
    uri: str, max_bytes: int | None = None, *, confine: Callable[[str], str | None] | None = None
) -> bytes:
    """The bytes at `uri`; with `max_bytes`, a larger object is refused before it is read
    (from its size as stored, and again while reading, in case it grew). `confine` (a run's
    read roots: why a real path may not be read, or None) checks a local file as opened,
    links resolved; S3 keys are plain names, checked when the run was planned."""
    uri = str(uri)
    with translate(uri):
        if confine is not None and not is_s3(uri):
            data = local.read_bytes(uri, max_bytes, confine)
        else:
            data = _backend(uri).read_bytes(uri, max_bytes)
    if max_bytes is not None:
        check_size(uri, len(data), max_bytes)
    return data


def write_bytes(uri: str, data: bytes, content_type: str | None = None) -> None:
    """Write `data` to `uri` (local: atomically, creating parent folders)."""
    uri = str(uri)
    with translate(uri):
        _backend(uri).write_bytes(uri, data, content_type)


def write_if_absent(uri: str, data: bytes) -> bool:
    """Create `uri` with `data` unless it exists; True if this call created it. Atomic."""
    uri = str(uri)
    with translate(uri):
        return _backend(uri).write_if_absent(uri, data)


def exists(uri: str) -> bool:
    """Whether the file (or local folder) or S3 object exists."""
    uri = str(uri)
    if is_s3(uri):
        return size_if_exists(uri) is not None
    with translate(uri):
        return local.exists(uri)


def size_if_exists(uri: str) -> int | None:
    """The size of a file or object, or None when there is none (a folder counts as none)."""
    uri = str(uri)
    with translate(uri):
        return _backend(uri).size_if_exists(uri)


def size(uri: str) -> int:
    uri = str(uri)
    with translate(uri):
        return _backend(uri).size(uri)


def delete(uri: str) -> None:
    """Delete a file or object; a missing one is not an error."""
    uri = str(uri)
    with translate(uri):
        _backend(uri).delete(uri)


def move(src: str, dst: str) -> None:
    """Move a file or object, creating the destination folder; works across backends."""
    src, dst = str(src), str(dst)
    if src == dst:
        return  # S3 refuses to copy an object onto itself
    if is_s3(src) != is_s3(dst):
        write_bytes(dst, read_bytes(src))
        delete(src)
        return
    with translate(f"{src} -> {dst}"):
        _backend(src).move(src, dst)


# --------------------------------------------------------------------------- listing


def list_prefix(uri: str) -> list[str]:
    """Every file or object under the folder/prefix `uri`, recursively, sorted, as URIs."""
    return sorted(path for path, _ in _listing(str(uri)))


def _listing(uri: str, limit: int | None = None) -> Iterator[tuple[str, int | None]]:
    """(URI, size) of every file or object under `uri`, unsorted; local sizes are None
    (stat'ed only for what a caller keeps). With `limit`, listing more entries than that
    (files and folders) raises StorageError instead of walking on."""
    with translate(uri):
        yield from _backend(uri).listing(uri, _entry_counter(uri, limit))


def _entry_counter(uri: str, limit: int | None) -> Callable[[int], None]:
    """A function a listing calls with each batch of entries it meets; past `limit` in all,
    it raises StorageError."""
    entries = 0

    def count(n: int) -> None:
        nonlocal entries
        entries += n
        if limit is not None and entries > limit:
            raise StorageError(
                uri, f"lists more than {limit:,} entries; narrow the glob (NST_MAX_GLOB_ENTRIES)"
            )

    return count


def glob(pattern: str) -> list[str]:
    """Sorted files/objects matching `pattern`; `**` spans any number of segments."""
    return [path for path, _ in glob_sized(pattern)]


def glob_sized(pattern: str, limit: int | None = None) -> list[tuple[str, int]]:
    """Sorted (URI, size) of the files/objects matching `pattern`; sizes come from the
    listing (S3) or a stat of each match (local), so nothing is read to learn them.

    The literal segments before the first wildcard form a prefix that is listed once (at
    most `limit` entries); the rest is matched against each listed path relative to it.
    """
    pattern = str(pattern)
    check_uri(pattern)
    scheme = S3_PREFIX if is_s3(pattern) else ""
    segments = pattern[len(scheme) :].split("/")
    first = next((i for i, s in enumerate(segments) if has_glob(s)), None)
    if first is None:
        found = size_if_exists(pattern)
        return [] if found is None else [(pattern, found)]
    if scheme and first == 0:
        raise StorageError(pattern, "wildcards in the bucket name are not supported")
    literal = "/".join(segments[:first])
    if not scheme and not literal and pattern.startswith("/"):
        literal = "/"
    matcher = glob_regex(segments[first:])
    prefix = scheme + literal
    matches = []
    for path, found in _listing(prefix or ".", limit):
        if scheme:
            relative = path[len(prefix) :].lstrip("/")
        else:
            relative = os.path.relpath(path, prefix or ".").replace(os.sep, "/")
        if matcher.fullmatch(relative):
            matches.append((path if scheme or prefix else relative, found))
    return sorted((path, _local_size(path) if found is None else found) for path, found in matches)


def _local_size(path: str) -> int:
    with translate(path):
        return local.listed_size(path)
