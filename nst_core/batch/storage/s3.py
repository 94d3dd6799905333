"""The S3 backend: the process-wide boto3 client (rebuilt when the environment that shapes it
changes), each storage operation on s3://bucket/key, and `translate`, which every storage
operation, local ones included, runs inside to turn boto3 and OS exceptions into StorageError
with a cause a user can act on. Transient failures (throttling, 5xx, dropped connections) are
retried by botocore itself before they reach `translate`, which marks them transient.
"""

from __future__ import annotations

import contextlib
import functools
import mimetypes
import os
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .errors import StorageError, check_size, redact
from .uris import S3_PREFIX, name, split, split_object

if TYPE_CHECKING:
    from botocore.exceptions import ClientError

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

# --------------------------------------------------------------------------- client

# Environment that shapes the client: a change (e.g. in tests) must build a new one. boto3
# reads the AWS_* itself; the client's retries and timeouts are settings (settings.py).
_CLIENT_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)
_client_lock = threading.Lock()


class EndpointError(Exception):
    """AWS_ENDPOINT_URL(_S3) cannot be an S3 endpoint; the message shows no secret in it."""


def s3_client() -> Any:  # a boto3 S3 client; boto3 has no type information
    """The process-wide boto3 S3 client for the current environment (thread-safe)."""
    from nst_core.settings import Settings

    env = tuple(os.environ.get(k) for k in _CLIENT_ENV)
    settings = Settings.from_env()  # the client is built where storage is first used
    tuning = (settings.s3_max_attempts, settings.s3_connect_timeout, settings.s3_read_timeout)
    # Building clients is not thread-safe in boto3; using one is.
    with _client_lock:
        return _build_client(env, tuning)


def reset_clients() -> None:
    """Forget cached clients, e.g. after changing credentials or endpoints."""
    with _client_lock:
        _build_client.cache_clear()


@functools.lru_cache(maxsize=4)
def _build_client(env: tuple[str | None, ...], tuning: tuple[int, float, float]) -> Any:
    import boto3
    from botocore.config import Config

    values = dict(zip(_CLIENT_ENV, env, strict=True))
    # The variable boto3 takes the endpoint from: the S3 one first.
    variable = next((v for v in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL") if values[v]), None)
    if variable:
        _check_endpoint(variable, str(values[variable]))
    session = boto3.session.Session()
    region = (
        values["AWS_REGION"] or values["AWS_DEFAULT_REGION"] or session.region_name or "us-east-1"
    )
    # boto3 reads AWS_ENDPOINT_URL(_S3) itself; a custom endpoint (SeaweedFS, MinIO, ...)
    # rarely has per-bucket DNS names, so address buckets by path there.
    config = Config(
        region_name=region,
        retries={"mode": "standard", "max_attempts": tuning[0]},
        connect_timeout=tuning[1],
        read_timeout=tuning[2],
        max_pool_connections=32,  # batch jobs use thread pools; the default of 10 thrashes
        s3={"addressing_style": "path"} if variable else None,
    )
    try:
        return session.client("s3", config=config)
    except ValueError as exc:  # botocore's "Invalid endpoint: URL", e.g. a host with a "_"
        if not variable:
            raise
        raise EndpointError(f"{variable} is not a valid endpoint URL: {redact(str(exc))}") from None


def _check_endpoint(variable: str, url: str) -> None:
    """Refuse what cannot be an S3 endpoint before boto3 does: it would print the whole URL
    (a query's signature, a password); this message shows its scheme, host and port at most.
    A query boto3 refuses; a fragment it would drop, so a URL with one is a mistake too."""
    try:
        parts = urlsplit(url)
        usable = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    except ValueError:  # e.g. an unclosed [ of an IPv6 address
        usable = False
    if not usable:
        raise EndpointError(f"{variable} is not an http:// or https:// URL with a host")
    if re.search(r"[?#]", url):
        raise EndpointError(
            f"{variable} ({redact(url)}) has a query or fragment, which an S3 endpoint cannot "
            "have: give scheme://host[:port][/path]"
        )


# --------------------------------------------------------------------------- errors


@contextlib.contextmanager
def translate(uri: str) -> Iterator[None]:
    """Turn boto3 and OS exceptions into StorageError with a cause a user can act on."""
    from botocore import exceptions as boto

    try:
        yield
    except StorageError:
        raise
    except EndpointError as exc:
        raise StorageError(uri, str(exc)) from None
    except boto.ClientError as exc:
        raise _client_error(uri, exc) from exc
    except (boto.NoCredentialsError, boto.PartialCredentialsError) as exc:
        cause = "no S3 credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        raise StorageError(uri, cause) from exc
    except (boto.EndpointConnectionError, boto.ConnectionError, boto.HTTPClientError) as exc:
        # botocore has already retried these; the message names the endpoint, never keys.
        # Not chained: a traceback would print the endpoint URL with any password in it.
        cause = f"cannot reach the S3 endpoint ({exc})"
        raise StorageError(uri, cause, transient=True) from None
    except boto.BotoCoreError as exc:
        # Chained only when its message names no URL: a traceback would print it whole.
        error = StorageError(uri, f"S3 request failed: {exc}")
        raise error from (exc if redact(str(exc)) == str(exc) else None)
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


def _client_error(uri: str, exc: ClientError) -> StorageError:
    """The StorageError for an S3 error answer (a botocore ClientError)."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code == "NoSuchBucket":
        cause = f"bucket {error.get('BucketName') or split(uri)[0]} does not exist"
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
    return StorageError(uri, cause, transient=transient)


def _content_type(uri: str) -> str:
    suffix = PurePosixPath(name(uri)).suffix.lower()
    guessed = _CONTENT_TYPES.get(suffix) or mimetypes.guess_type(name(uri))[0]
    return guessed or "application/octet-stream"


# --------------------------------------------------------------------------- operations


def read_bytes(uri: str, max_bytes: int | None) -> bytes:
    """The object's bytes; with `max_bytes`, at most one byte more, after refusing an object
    whose stored size is already over it."""
    bucket, key = split_object(uri)
    answer = s3_client().get_object(Bucket=bucket, Key=key)
    if max_bytes is None:
        return answer["Body"].read()
    try:
        check_size(uri, answer["ContentLength"], max_bytes)
        return answer["Body"].read(max_bytes + 1)
    finally:
        answer["Body"].close()


def write_bytes(uri: str, data: bytes, content_type: str | None = None) -> None:
    bucket, key = split_object(uri)
    s3_client().put_object(
        Bucket=bucket, Key=key, Body=data, ContentType=content_type or _content_type(uri)
    )


def write_if_absent(uri: str, data: bytes) -> bool:
    from botocore.exceptions import ClientError

    bucket, key = split_object(uri)
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


def size_if_exists(uri: str) -> int | None:
    from botocore.exceptions import ClientError

    bucket, key = split_object(uri)
    try:
        return s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"]
    except ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            return None
        raise


def size(uri: str) -> int:
    bucket, key = split_object(uri)
    return s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"]


def delete(uri: str) -> None:
    bucket, key = split_object(uri)
    s3_client().delete_object(Bucket=bucket, Key=key)


def move(src: str, dst: str) -> None:
    """Copy the object within S3, then delete the original."""
    (src_bucket, src_key), (dst_bucket, dst_key) = split_object(src), split_object(dst)
    client = s3_client()
    client.copy_object(
        CopySource={"Bucket": src_bucket, "Key": src_key}, Bucket=dst_bucket, Key=dst_key
    )
    client.delete_object(Bucket=src_bucket, Key=src_key)


def listing(uri: str, count: Callable[[int], None]) -> Iterator[tuple[str, int]]:
    """(URI, size) of every object under the prefix `uri`, but for folder markers; `count`
    is told how many keys each page of the listing holds."""
    bucket, key = split(uri)
    # A prefix is a folder: "s3://b/a" must not list "ab/...".
    prefix = key.rstrip("/") + "/" if key.rstrip("/") else ""
    pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        items = page.get("Contents", [])
        count(len(items))
        for item in items:
            if not item["Key"].endswith("/"):  # folder markers are not files
                yield f"{S3_PREFIX}{bucket}/{item['Key']}", item["Size"]
