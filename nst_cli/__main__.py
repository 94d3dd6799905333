"""`python -m nst_cli ARGS`: the `nst` command."""

from nst_cli.app import main

main()
