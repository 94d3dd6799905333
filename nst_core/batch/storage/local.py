"""The local-disk backend: each storage operation on a plain path, with atomic writes. Data
goes to a complete, fsync'ed temporary file beside its destination and is renamed (or, to
create a file only if absent, hard-linked) onto the final name, so a killed run never leaves a
truncated file under a final name, and listings skip those temporaries. Each operation checks
its path first and lets OS errors rise; the facade turns them into StorageError.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import StorageError, check_size
from .uris import check_uri


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


def read_bytes(
    path: str, max_bytes: int | None, confine: Callable[[str], str | None] | None = None
) -> bytes:
    """The file's bytes; with `max_bytes`, at most one byte more, after refusing a file whose
    size is already over it. With `confine`, the file actually opened (every link resolved,
    from the open descriptor itself) must be one it does not object to: a link re-pointed
    between planning and reading cannot lead the read out of its roots."""
    check_uri(path)
    with open(path, "rb") as handle:
        if confine is not None and (why := confine(_opened_path(handle.fileno(), path))):
            raise StorageError(path, f"refused when opened: {why}")
        if max_bytes is None:
            return handle.read()
        check_size(path, os.fstat(handle.fileno()).st_size, max_bytes)
        return handle.read(max_bytes + 1)


def _opened_path(fd: int, path: str) -> str:
    """The real path of an open file: Linux names it under /proc; elsewhere resolving the
    path just after opening leaves only a tiny window."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)


def write_bytes(path: str, data: bytes, content_type: str | None = None) -> None:
    """Write the file atomically, creating parent folders (files keep no `content_type`)."""
    check_uri(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)


def write_if_absent(path: str, data: bytes) -> bool:
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


def exists(path: str) -> bool:
    check_uri(path)
    return os.path.exists(path)


def size_if_exists(path: str) -> int | None:
    check_uri(path)
    return os.stat(path).st_size if os.path.isfile(path) else None


def size(path: str) -> int:
    check_uri(path)
    return os.stat(path).st_size


def listed_size(path: str) -> int:
    """The size of a file a listing found (its path needs no check)."""
    return os.stat(path).st_size


def delete(path: str) -> None:
    check_uri(path)
    Path(path).unlink(missing_ok=True)


def move(src: str, dst: str) -> None:
    check_uri(src)
    check_uri(dst)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dst)


def listing(path: str, count: Callable[[int], None]) -> Iterator[tuple[str, None]]:
    """(path, None) of every file under the folder `path`, recursively, unsorted, but for
    temporaries; `count` is told how many entries (files and folders) each folder holds."""
    check_uri(path)
    for folder, dirs, filenames in os.walk(path):
        count(len(dirs) + len(filenames))
        for filename in filenames:
            if not _is_temp(filename):
                yield os.path.join(folder, filename), None
