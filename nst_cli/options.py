"""What the `nst` commands share: `-p key=value` overrides, `--read-root` / `--write-root`
and their help, and the NST_* settings, parsed once per command."""

from __future__ import annotations

from nst_core.batch.roots import Roots
from nst_core.errors import NstError, ParamsError
from nst_core.settings import Settings

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def parse_overrides(pairs: list[str] | None) -> dict:
    """`key=value` options -> dict; values are YAML scalars or lists (50, 1e4, [a, b])."""
    import yaml

    overrides = {}
    for item in pairs or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParamsError([f"--param: expected key=value, got {item!r}"])
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            overrides[key.strip()] = value
    return overrides


def settings() -> Settings:
    """The NST_* settings, parsed once per command (a bad one is a one-line error)."""
    return Settings.from_env()


def debug_enabled() -> bool:
    """Whether NST_DEBUG asks for tracebacks (unreadable settings ask for none)."""
    try:
        return Settings.from_env().debug
    except NstError:
        return False


def roots_of(read_root: list[str] | None, write_root: list[str] | None) -> Roots:
    """The run's roots from the repeatable options (none given: unrestricted)."""
    return Roots.of(read_root or None, write_root or None)


MAX_JOBS_HELP = "Refuse manifests that expand to more jobs than this."
READ_ROOT_HELP = (
    "Inputs must lie under this folder or s3:// prefix (repeatable); default: anywhere."
)
WRITE_ROOT_HELP = (
    "The output must lie under this folder or s3:// prefix (repeatable); default: anywhere."
)
