"""Reading and writing bytes where users keep their images: local paths or s3://bucket/key.

Every function takes a URI that is either a plain local path or `s3://bucket/key`; nothing
S3-specific lives outside this module. Permanent failures raise `StorageError` ("URI: cause").
Transient S3 failures (throttling, 5xx, dropped connections) are retried by botocore itself.

Local writes are atomic: data goes to a temporary file in the destination folder and is renamed
over the final name, so a killed run never leaves a truncated file under a final name.
"""

from __future__ import annotations

import contextlib
import functools
import mimetypes
import os
import posixpath
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from nst_core.errors import NstError

S3_PREFIX = "s3://"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_GLOB_CHARS = "*?["
# Types mimetypes does not know (or guesses differently across Python versions).
_CONTENT_TYPES = {
    ".json": "application/json",
    ".md": "text/markdown",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
}
# Throttling codes that S3-compatible stores answer with 4xx statuses.
_TRANSIENT_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout"})
_CREDENTIALS_HINT = "S3 rejected the credentials (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"


class StorageError(NstError):
    """A storage operation failed, after botocore's own retries for S3.

    `transient` marks failures a later retry may fix (endpoint unreachable, throttling,
    server errors): batch runs retry those units as a whole instead of failing their jobs.
    """

    def __init__(self, uri: str, cause: str, transient: bool = False):
        self.uri, self.cause, self.transient = str(uri), redact(cause), transient
        super().__init__(f"{uri}: {self.cause}")

    def __reduce__(self):
        # Exceptions pickle as cls(*args); ours takes more than the message.
        return type(self), (self.uri, self.cause, self.transient)


_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


def redact(text: str) -> str:
    """`text` with the user and password of any URL in it (an endpoint's `user:pass@`) hidden."""
    return _USERINFO.sub("***@", str(text))


# --------------------------------------------------------------------------- URIs


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


def _split(uri: str) -> tuple[str, str]:
    """(bucket, key) of an s3 URI; key may be empty."""
    check_uri(uri)
    bucket, _, key = uri[len(S3_PREFIX) :].partition("/")
    return bucket, key


def _object(uri: str) -> tuple[str, str]:
    bucket, key = _split(uri)
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
    bucket, key = _split(base)
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
    bucket, key = _split(uri)
    folder = key.rstrip("/").rpartition("/")[0]
    return f"{S3_PREFIX}{bucket}/{folder}" if folder else f"{S3_PREFIX}{bucket}"


def name(uri: str) -> str:
    uri = str(uri)
    if is_s3(uri):
        return uri[len(S3_PREFIX) :].rstrip("/").rpartition("/")[2]
    return Path(uri).name


def stem(uri: str) -> str:
    return PurePosixPath(name(uri)).stem


# --------------------------------------------------------------------------- S3 client

# Environment that shapes the client: a change (e.g. in tests) must build a new one.
_CLIENT_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "NST_S3_MAX_ATTEMPTS",
    "NST_S3_CONNECT_TIMEOUT",
    "NST_S3_READ_TIMEOUT",
)
_client_lock = threading.Lock()


def s3_client():
    """The process-wide boto3 S3 client for the current environment (thread-safe)."""
    env = tuple(os.environ.get(k) for k in _CLIENT_ENV)
    # Building clients is not thread-safe in boto3; using one is.
    with _client_lock:
        return _build_client(env)


def reset_clients() -> None:
    """Forget cached clients, e.g. after changing credentials or endpoints."""
    with _client_lock:
        _build_client.cache_clear()


@functools.lru_cache(maxsize=4)
def _build_client(env: tuple[str | None, ...]):
    import boto3
    from botocore.config import Config

    values = dict(zip(_CLIENT_ENV, env, strict=True))
    session = boto3.session.Session()
    region = (
        values["AWS_REGION"] or values["AWS_DEFAULT_REGION"] or session.region_name or "us-east-1"
    )
    # boto3 reads AWS_ENDPOINT_URL(_S3) itself; a custom endpoint (SeaweedFS, MinIO, ...)
    # rarely has per-bucket DNS names, so address buckets by path there.
    custom_endpoint = values["AWS_ENDPOINT_URL"] or values["AWS_ENDPOINT_URL_S3"]
    config = Config(
        region_name=region,
        retries={"mode": "standard", "max_attempts": int(values["NST_S3_MAX_ATTEMPTS"] or 5)},
        connect_timeout=float(values["NST_S3_CONNECT_TIMEOUT"] or 5),
        read_timeout=float(values["NST_S3_READ_TIMEOUT"] or 30),
        max_pool_connections=32,  # batch jobs use thread pools; the default of 10 thrashes
        s3={"addressing_style": "path"} if custom_endpoint else None,
    )
    return session.client("s3", config=config)


@contextlib.contextmanager
def _errors(uri: str) -> Iterator[None]:
    """Turn boto3 and OS exceptions into StorageError with a cause a user can act on."""
    from botocore import exceptions as boto

    try:
        yield
    except StorageError:
        raise
    except boto.ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            cause = f"bucket {error.get('BucketName') or _split(uri)[0]} does not exist"
        elif code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
            cause = _CREDENTIALS_HINT
        elif code in ("NoSuchKey", "NotFound", "404") or status == 404:
            cause = "no such object"
        elif code == "403":
            # A HEAD answer has no body, so a bad key and a missing grant look the same.
            cause = "access denied, or " + _CREDENTIALS_HINT
        elif code == "AccessDenied" or status == 403:
            cause = "access denied"
        else:
            cause = f"S3 error {code or status}: {error.get('Message', exc)}"
        transient = (status or 0) >= 500 or code in _TRANSIENT_CODES
        raise StorageError(uri, cause, transient=transient) from exc
    except (boto.NoCredentialsError, boto.PartialCredentialsError) as exc:
        cause = "no S3 credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        raise StorageError(uri, cause) from exc
    except (boto.EndpointConnectionError, boto.ConnectionError, boto.HTTPClientError) as exc:
        # botocore has already retried these; the message names the endpoint, never keys.
        # Not chained: a traceback would print the endpoint URL with any password in it.
        cause = f"cannot reach the S3 endpoint ({exc})"
        raise StorageError(uri, cause, transient=True) from None
    except boto.BotoCoreError as exc:
        raise StorageError(uri, f"S3 request failed: {exc}") from exc
    except FileNotFoundError as exc:
        raise StorageError(uri, "no such file") from exc
    except IsADirectoryError as exc:
        raise StorageError(uri, "is a directory") from exc
    except NotADirectoryError as exc:
        raise StorageError(uri, "a parent is not a directory") from exc
    except PermissionError as exc:
        raise StorageError(uri, "permission denied") from exc
    except OSError as exc:
        raise StorageError(uri, exc.strerror or str(exc)) from exc


def _content_type(uri: str) -> str:
    suffix = PurePosixPath(name(uri)).suffix.lower()
    guessed = _CONTENT_TYPES.get(suffix) or mimetypes.guess_type(name(uri))[0]
    return guessed or "application/octet-stream"


# --------------------------------------------------------------------------- bytes


@contextlib.contextmanager
def _complete_temp_sibling(path: Path, data: bytes) -> Iterator[str]:
    """A temporary file beside `path` holding all of `data`, flushed to disk; removed after."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        yield tmp
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write(path: Path | str, data: bytes) -> None:
    """Write `data` to `path` via a temporary sibling and a rename."""
    path = Path(path)
    with _complete_temp_sibling(path, data) as tmp:
        os.replace(tmp, path)


def _is_temp(filename: str) -> bool:
    return filename.startswith(".") and filename.endswith(".part")


def read_bytes(uri: str, max_bytes: int | None = None) -> bytes:
    """The bytes at `uri`; with `max_bytes`, a larger object is refused before it is read
    (from its size as stored, and again while reading, in case it grew)."""
    uri = str(uri)
    with _errors(uri):
        if not is_s3(uri):
            check_uri(uri)
            if max_bytes is None:
                return Path(uri).read_bytes()
            with open(uri, "rb") as handle:
                _check_size(uri, os.fstat(handle.fileno()).st_size, max_bytes)
                data = handle.read(max_bytes + 1)
        else:
            bucket, key = _object(uri)
            answer = s3_client().get_object(Bucket=bucket, Key=key)
            if max_bytes is None:
                return answer["Body"].read()
            try:
                _check_size(uri, answer["ContentLength"], max_bytes)
                data = answer["Body"].read(max_bytes + 1)
            finally:
                answer["Body"].close()
    _check_size(uri, len(data), max_bytes)
    return data


def _check_size(uri: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise StorageError(uri, too_large(size, max_bytes))


def too_large(size: int, max_bytes: int) -> str:
    return (
        f"is {size / 2**20:,.1f} MB; an input may be at most {max_bytes / 2**20:g} MB "
        "(NST_MAX_INPUT_MB)"
    )


def write_bytes(uri: str, data: bytes, content_type: str | None = None) -> None:
    """Write `data` to `uri` (local: atomically, creating parent folders)."""
    uri = str(uri)
    with _errors(uri):
        if not is_s3(uri):
            check_uri(uri)
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
            atomic_write(uri, data)
            return
        bucket, key = _object(uri)
        s3_client().put_object(
            Bucket=bucket, Key=key, Body=data, ContentType=content_type or _content_type(uri)
        )


def write_if_absent(uri: str, data: bytes) -> bool:
    """Create `uri` with `data` unless it exists; True if this call created it. Atomic."""
    uri = str(uri)
    with _errors(uri):
        if not is_s3(uri):
            return _local_write_if_absent(uri, data)
        from botocore.exceptions import ClientError

        bucket, key = _object(uri)
        try:
            s3_client().put_object(
                Bucket=bucket,
                Key=key,
                Body=data,
                ContentType=_content_type(uri),
                IfNoneMatch="*",
            )
        except ClientError as exc:
            # 412: the object exists. 409: a concurrent conditional write to it won.
            code = exc.response.get("Error", {}).get("Code")
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        return True


def _local_write_if_absent(path: str, data: bytes) -> bool:
    check_uri(path)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write fully under a temporary name, then hard-link: link() refuses to replace an
    # existing file, so readers never see a partial file and only one creator wins.
    with _complete_temp_sibling(target, data) as tmp:
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False
        return True


def exists(uri: str) -> bool:
    """Whether the file (or local folder) or S3 object exists."""
    uri = str(uri)
    if is_s3(uri):
        return size_if_exists(uri) is not None
    with _errors(uri):
        check_uri(uri)
        return os.path.exists(uri)


def size_if_exists(uri: str) -> int | None:
    """The size of a file or object, or None when there is none (a folder counts as none)."""
    uri = str(uri)
    with _errors(uri):
        if not is_s3(uri):
            check_uri(uri)
            return os.stat(uri).st_size if os.path.isfile(uri) else None
        from botocore.exceptions import ClientError

        bucket, key = _object(uri)
        try:
            return s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"]
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise


def size(uri: str) -> int:
    uri = str(uri)
    with _errors(uri):
        if not is_s3(uri):
            check_uri(uri)
            return os.stat(uri).st_size
        bucket, key = _object(uri)
        return s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"]


def delete(uri: str) -> None:
    """Delete a file or object; a missing one is not an error."""
    uri = str(uri)
    with _errors(uri):
        if not is_s3(uri):
            check_uri(uri)
            Path(uri).unlink(missing_ok=True)
            return
        bucket, key = _object(uri)
        s3_client().delete_object(Bucket=bucket, Key=key)


def move(src: str, dst: str) -> None:
    """Move a file or object, creating the destination folder; works across backends."""
    src, dst = str(src), str(dst)
    if src == dst:
        return  # S3 refuses to copy an object onto itself
    if is_s3(src) != is_s3(dst):
        write_bytes(dst, read_bytes(src))
        delete(src)
        return
    with _errors(f"{src} -> {dst}"):
        if not is_s3(src):
            check_uri(src)
            check_uri(dst)
            Path(dst).parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            return
        (src_bucket, src_key), (dst_bucket, dst_key) = _object(src), _object(dst)
        client = s3_client()
        client.copy_object(
            CopySource={"Bucket": src_bucket, "Key": src_key}, Bucket=dst_bucket, Key=dst_key
        )
        client.delete_object(Bucket=src_bucket, Key=src_key)


# --------------------------------------------------------------------------- listing


def list_prefix(uri: str) -> list[str]:
    """Every file or object under the folder/prefix `uri`, recursively, sorted, as URIs."""
    return sorted(path for path, _ in _listing(str(uri)))


def _listing(uri: str, limit: int | None = None) -> Iterator[tuple[str, int | None]]:
    """(URI, size) of every file or object under `uri`, unsorted; local sizes are None
    (stat'ed only for what a caller keeps). With `limit`, listing more entries than that
    (files and folders) raises StorageError instead of walking on."""
    entries = 0

    def count(n: int) -> None:
        nonlocal entries
        entries += n
        if limit is not None and entries > limit:
            raise StorageError(
                uri, f"lists more than {limit:,} entries; narrow the glob (NST_MAX_GLOB_ENTRIES)"
            )

    with _errors(uri):
        if not is_s3(uri):
            check_uri(uri)
            for folder, dirs, filenames in os.walk(uri):
                count(len(dirs) + len(filenames))
                for filename in filenames:
                    if not _is_temp(filename):
                        yield os.path.join(folder, filename), None
            return
        bucket, key = _split(uri)
        # A prefix is a folder: "s3://b/a" must not list "ab/...".
        prefix = key.rstrip("/") + "/" if key.rstrip("/") else ""
        pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            items = page.get("Contents", [])
            count(len(items))
            for item in items:
                if not item["Key"].endswith("/"):  # folder markers are not files
                    yield f"{S3_PREFIX}{bucket}/{item['Key']}", item["Size"]


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


def _glob_regex(segments: list[str]) -> re.Pattern[str]:
    parts = []
    for index, segment in enumerate(segments):
        last = index == len(segments) - 1
        if segment == "**":
            # Any number of whole segments, including none.
            parts.append(".*" if last else "(?:[^/]+/)*")
        else:
            parts.append(_segment_regex(segment) + ("" if last else "/"))
    return re.compile("".join(parts))


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
    matcher = _glob_regex(segments[first:])
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
    with _errors(path):
        return os.stat(path).st_size
