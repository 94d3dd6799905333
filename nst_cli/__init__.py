"""The `nst` command on top of nst_core and flows (nst_cli/app.py registers every command)."""
