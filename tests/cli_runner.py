"""Run the `nst` command in-process, the way its console script does."""

import sys

import pytest

from nst_cli import app as cli


def run_cli(args, capsys):
    """`nst ARGS` -> (exit code, stdout, stderr)."""
    sys.argv = ["nst", *map(str, args)]
    with pytest.raises(SystemExit) as info:
        cli.main()
    out, err = capsys.readouterr()
    return info.value.code, out, err
