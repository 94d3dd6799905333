"""URI syntax, with no I/O: telling a local path from s3://bucket/key, checking that a URI is
one the storage layer supports, splitting an S3 URI into bucket and key, joining a relative
path onto a folder or prefix, naming a URI's parent, name and stem, and turning a glob pattern
(`*`, `?`, `[...]` within one segment, `**` across any number) into a regular expression.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path, PurePosixPath

from .errors import StorageError

S3_PREFIX = "s3://"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_GLOB_CHARS = "*?["


def is_s3(uri: str) -> bool:
    return str(uri).startswith(S3_PREFIX)


def check_uri(uri: str) -> None:
    """Raise StorageError unless `uri` is a local path or s3://bucket[/key]."""
    uri = str(uri)
    if is_s3(uri):
        if not uri[len(S3_PREFIX) :].split("/", 1)[0]:
            raise StorageError(uri, "no bucket name (expected s3://bucket/key)")
    elif _SCHEME.match(uri):
        raise StorageError(uri, "only local paths and s3://bucket/key are supported")


def split(uri: str) -> tuple[str, str]:
    """(bucket, key) of an s3 URI; key may be empty."""
    check_uri(uri)
    bucket, _, key = uri[len(S3_PREFIX) :].partition("/")
    return bucket, key


def split_object(uri: str) -> tuple[str, str]:
    """(bucket, key) of an s3 URI that names an object: the key may not be empty."""
    bucket, key = split(uri)
    if not key:
        raise StorageError(uri, "no object key (expected s3://bucket/key)")
    return bucket, key


def has_dot_segment(uri: str) -> bool:
    """Whether an S3 URI's key has a `.` or `..` segment (S3 keeps them literally)."""
    if not is_s3(uri):
        return False
    key = str(uri)[len(S3_PREFIX) :].partition("/")[2]
    return any(segment in (".", "..") for segment in key.split("/"))


def has_glob(uri: str) -> bool:
    return any(c in str(uri) for c in _GLOB_CHARS)


def join(base: str, relative: str) -> str:
    """Resolve `relative` against the folder or prefix `base`; s3 or absolute paths win."""
    base, relative = str(base), str(relative)
    if is_s3(relative) or os.path.isabs(relative):
        return relative
    if not is_s3(base):
        return os.path.normpath(os.path.join(base, relative))
    bucket, key = split(base)
    joined = posixpath.normpath(posixpath.join(key, relative))
    if joined == ".":
        return f"{S3_PREFIX}{bucket}"
    if joined == ".." or joined.startswith("../"):
        raise StorageError(f"{base} + {relative}", "goes above the bucket")
    return f"{S3_PREFIX}{bucket}/{joined}"


def parent(uri: str) -> str:
    uri = str(uri)
    if not is_s3(uri):
        return str(Path(uri).parent)
    bucket, key = split(uri)
    folder = key.rstrip("/").rpartition("/")[0]
    return f"{S3_PREFIX}{bucket}/{folder}" if folder else f"{S3_PREFIX}{bucket}"


def name(uri: str) -> str:
    uri = str(uri)
    if is_s3(uri):
        return uri[len(S3_PREFIX) :].rstrip("/").rpartition("/")[2]
    return Path(uri).name


def stem(uri: str) -> str:
    return PurePosixPath(name(uri)).stem


def _segment_regex(segment: str) -> str:
    """Regex for one path segment: `*`, `?` and `[...]` never match "/"."""
    out, i = [], 0
    while i < len(segment):
        char = segment[i]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[" and (end := segment.find("]", i + 2)) != -1:
            body = segment[i + 1 : end]
            negate = body[0] in "!^"
            body = body[1:] if negate else body
            body = body.replace("\\", "\\\\").replace("[", "\\[")
            out.append(f"[^/{body}]" if negate else f"[{body}]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


def glob_regex(segments: list[str]) -> re.Pattern[str]:
    """The pattern a path relative to a glob's literal prefix must fully match, from the
    glob's remaining `/`-separated `segments`."""
    parts = []
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**":
            # Any number of whole segments, including none.
            parts.append(".*" if last else "(?:[^/]+/)*")
        else:
            parts.append(_segment_regex(segment) + ("" if last else "/"))
    return re.compile("".join(parts))
