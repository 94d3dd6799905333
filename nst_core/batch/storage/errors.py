"""The storage layer's one exception, `StorageError` ("URI: cause"), and the messages it carries:
a cause shows an endpoint URL as its scheme, host and port only (`redact`: no user, password,
path or query, any of which may hold a secret), and an input over the size limit is refused
with the same line whether its size came from a listing, a stat or the bytes read.
"""

from __future__ import annotations

import re

from nst_core.errors import NstError

# An http(s) URL as messages quote it: up to whitespace, a quote, a backtick or < >.
_HTTP_URL = re.compile(r"(?i)\b(https?)://([^\s\"'`<>]*)")
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")


class StorageError(NstError):
    """A storage operation failed, after botocore's own retries for S3.

    `transient` marks failures a later retry may fix (endpoint unreachable, throttling,
    server errors): batch runs retry those units as a whole instead of failing their jobs.
    """

    # Public as nst_core.batch.storage.StorageError: pickles and tracebacks name it there.
    __module__ = "nst_core.batch.storage"

    def __init__(self, uri: str, cause: str, transient: bool = False):
        self.uri, self.cause, self.transient = str(uri), redact(cause), transient
        super().__init__(f"{uri}: {self.cause}")

    def __reduce__(self) -> tuple[type[StorageError], tuple[str, str, bool]]:
        # Exceptions pickle as cls(*args); ours takes more than the message.
        return type(self), (self.uri, self.cause, self.transient)


def redact(text: str) -> str:
    """`text` with every http(s) URL in it cut to its scheme, host and port (an endpoint's
    `user:pass@`, path, `?query` and `#fragment` may hold secrets: a signature, a token), and
    the `user:pass@` of any other URL hidden as `***@` (s3://bucket/key stays whole)."""
    return _USERINFO.sub("***@", _HTTP_URL.sub(_origin, str(text)))


def _origin(match: re.Match[str]) -> str:
    """The URL matched cut to `scheme://host[:port]`, or `scheme://***` where its host
    cannot be told apart from a secret (an `@` past its `?` or `#`)."""
    scheme, rest = match.group(1).lower(), match.group(2)
    authority = re.split(r"[?#]", rest, maxsplit=1)[0]
    if "@" in authority:  # user:pass@host; a password with a raw "/" still ends at the last @
        authority = authority.rpartition("@")[2]
    elif "@" in rest:  # an @ past the ? or #: the host is not what the text suggests
        return f"{scheme}://***"
    return f"{scheme}://{authority.split('/', 1)[0]}"


def check_size(uri: str, size: int, max_bytes: int) -> None:
    """Raise StorageError if `size` bytes at `uri` are over `max_bytes`."""
    if size > max_bytes:
        raise StorageError(uri, too_large(size, max_bytes))


def too_large(size: int, max_bytes: int) -> str:
    return (
        f"is {size / 2**20:,.1f} MB; an input may be at most {max_bytes / 2**20:g} MB "
        "(NST_MAX_INPUT_MB)"
    )
