"""The storage layer's one exception, `StorageError` ("URI: cause"), and the messages it carries:
a cause never shows an endpoint's user or password (`redact`), and an input over the size limit
is refused with the same line whether its size came from a listing, a stat or the bytes read.
"""

from __future__ import annotations

import re

from nst_core.errors import NstError

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
    """`text` with the user and password of any URL in it (an endpoint's `user:pass@`) hidden."""
    return _USERINFO.sub("***@", str(text))


def check_size(uri: str, size: int, max_bytes: int) -> None:
    """Raise StorageError if `size` bytes at `uri` are over `max_bytes`."""
    if size > max_bytes:
        raise StorageError(uri, too_large(size, max_bytes))


def too_large(size: int, max_bytes: int) -> str:
    return (
        f"is {size / 2**20:,.1f} MB; an input may be at most {max_bytes / 2**20:g} MB "
        "(NST_MAX_INPUT_MB)"
    )
