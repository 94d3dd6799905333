"""The `python -m tools.stack` command: up, down, drop, nightly, env.

    up                  start (or keep) the stack; print what a new user runs next
    down                stop everything `up` started
    drop FILE [--as N]  put a manifest into the local inbox (no aws CLI needed)
    nightly FILE        make FILE the nightly manifest, check it, turn its schedule on
    env                 shell lines pointing prefect, nst and boto3 at this stack

Every error is one line naming what is wrong and what to do (exit 1; 2 for usage).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from nst_core.errors import NstError
from nst_core.settings import Settings
from tools import api
from tools.postgres import PostgresError
from tools.samples import BUCKET, SAMPLES, sample_manifest_uri
from tools.seaweed import S3Error
from tools.stack import REPO, LocalStack
from tools.stack_config import StackError

INBOX = "watch-inbox/inbox"
NIGHTLY = "stylize-batch/nightly"


def _deployment(stack: LocalStack, name: str) -> dict[str, Any]:
    try:
        found: dict[str, Any] = api.call(stack.api_url, "GET", f"deployments/name/{name}")
    except api.ApiError as error:
        if error.status == 404:
            raise StackError(f"no deployment {name} on {stack.url}: run `make up`") from None
        raise
    return found


def _require_running(stack: LocalStack) -> None:
    if not stack.healthy() or (stack.local_s3 and "s3" not in stack.running()):
        raise StackError(f"the local stack in {stack.home} is not running: run `make up` first")


def _s3_target(uri: str, what: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise StackError(f"{what} is {uri!r}, not an s3:// URI: put the file there yourself")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key.strip("/")


def _manifest_file(path: Path) -> bytes:
    if not path.is_file():
        raise StackError(f"{path}: no such file (give the path of a manifest, *.yaml or *.yml)")
    if path.suffix not in (".yaml", ".yml"):
        raise StackError(f"{path}: manifests are *.yaml or *.yml files (the inbox takes no other)")
    return path.read_bytes()


def drop(stack: LocalStack, path: Path, name: str | None) -> str:
    """Put `path` into the inbox the inbox deployment watches; returns its URI."""
    body = _manifest_file(path)
    target = name or path.name
    if "/" in target or not target.endswith((".yaml", ".yml")):
        raise StackError(f"--as {target!r}: give a file name ending in .yaml or .yml")
    _require_running(stack)
    inbox = _deployment(stack, INBOX)["parameters"].get("inbox", "")
    bucket, prefix = _s3_target(inbox, f"{INBOX}'s inbox")
    key = f"{prefix}/{target}" if prefix else target
    client = stack.s3().client()
    try:
        client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
    except client.exceptions.ClientError as error:
        if error.response.get("Error", {}).get("Code") != "PreconditionFailed":
            raise
        raise StackError(
            f"s3://{bucket}/{key} is still waiting in the inbox: drop it under another "
            "name (--as NAME.yaml)"
        ) from None
    return f"s3://{bucket}/{key}"


def nightly(stack: LocalStack, path: Path) -> str:
    """Make `path` the nightly deployment's manifest and turn its schedule on; returns the
    manifest's URI. It is validated first beside where it goes (relative paths resolve the
    same), so a broken file never replaces a working nightly manifest."""
    body = _manifest_file(path)
    _require_running(stack)
    deployment = _deployment(stack, NIGHTLY)
    uri = deployment["parameters"].get("manifest", "")
    bucket, key = _s3_target(uri, f"{NIGHTLY}'s manifest")
    folder, _, name = key.rpartition("/")
    candidate = f"{folder}/.candidate-{name}" if folder else f".candidate-{name}"
    client = stack.s3().client()
    client.put_object(Bucket=bucket, Key=candidate, Body=body)
    try:
        check = subprocess.run(
            [sys.executable, "-m", "nst_cli", "validate", f"s3://{bucket}/{candidate}"],
            env=stack.environment(),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        client.delete_object(Bucket=bucket, Key=candidate)
    if check.returncode != 0:
        print(check.stdout + check.stderr, end="", file=sys.stderr)
        raise StackError(f"{path} does not validate (above): {uri} and its schedule are unchanged")
    client.put_object(Bucket=bucket, Key=key, Body=body)
    for schedule in deployment["schedules"]:
        path_ = f"deployments/{deployment['id']}/schedules/{schedule['id']}"
        api.call(stack.api_url, "PATCH", path_, {"active": True})
    if deployment.get("paused"):
        api.call(stack.api_url, "POST", f"deployments/{deployment['id']}/resume_deployment")
    return uri


def environment_lines(stack: LocalStack) -> str:
    _require_running(stack)
    values = {"PREFECT_API_URL": stack.api_url, **stack.s3().client_environment()}
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in values.items())
    return f"export {exports}\nunset AWS_ENDPOINT_URL_S3 AWS_PROFILE AWS_SESSION_TOKEN\n"


def _schedule_line(stack: LocalStack, name: str) -> str:
    deployment = _deployment(stack, name)
    on = [s for s in deployment["schedules"] if s["active"]] and not deployment.get("paused")
    return f"{name}: {'on' if on else 'off'}"


def next_steps(stack: LocalStack, pids: dict[str, int]) -> str:
    """What `up` prints last: where everything is, and the commands a new user runs next."""
    config = stack.config()
    home = stack.home.relative_to(REPO) if stack.home.is_relative_to(REPO) else stack.home
    gpu = sum(1 for name in pids if name.startswith("worker"))
    database = f"PostgreSQL on 127.0.0.1:{config.postgres_port}"
    samples = f"{SAMPLES}/ (drawn inputs, demo.yaml), inbox/"
    return f"""
The nst-batch stack is up; state and logs in {home}/.
  Prefect UI   {stack.url}   (API {stack.api_url}; {database})
  Local S3     {stack.s3().endpoint_url}   bucket {BUCKET}: {samples}
  Work pools   nst-gpu ({gpu} worker) for batches, nst-light for the inbox watcher
  Schedules    {_schedule_line(stack, INBOX)} (every 60 s); {_schedule_line(stack, NIGHTLY)}

Next, from {REPO}:
  source .venv/bin/activate
  eval "$(python -m tools.stack env)"    # this shell's prefect, nst and boto3 use this stack
  prefect deployment run 'stylize-batch/adhoc' -p manifest={sample_manifest_uri()} --watch
  python -m tools.stack drop {home}/samples/demo.yaml   # into the inbox: a batch within a minute
  python -m tools.stack nightly {home}/samples/demo.yaml   # checked; nightly's; schedule on
  nst gallery s3://{BUCKET}/outputs/demo --serve   # the results, once a batch has run
  make down                                     # stop all of it
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tools.stack", description="The local nst-batch stack."
    )
    parser.add_argument("--home", type=Path, default=REPO / ".prefect", help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start the stack (idempotent)")
    commands.add_parser("down", help="stop everything `up` started")
    dropping = commands.add_parser("drop", help="put a manifest into the local inbox")
    dropping.add_argument("file", type=Path)
    dropping.add_argument("--as", dest="name", help="the name it gets in the inbox")
    nightly_ = commands.add_parser("nightly", help="set the nightly manifest; schedule on")
    nightly_.add_argument("file", type=Path)
    commands.add_parser("env", help="print shell lines that point at this stack")
    args = parser.parse_args(argv)
    try:
        stack = LocalStack(home=args.home.resolve(), port=Settings.from_env().prefect_port)
        if args.command == "up":
            print(next_steps(stack, stack.up()))
        elif args.command == "down":
            stopped = stack.down()
            print(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
        elif args.command == "drop":
            uri = drop(stack, args.file, args.name)
            print(
                f"dropped {args.file} as {uri}; the inbox watcher starts its batch within a minute"
            )
        elif args.command == "nightly":
            uri = nightly(stack, args.file)
            print(f"{uri} is the nightly manifest; {_schedule_line(stack, NIGHTLY)}")
        else:
            print(environment_lines(stack), end="")
    except (StackError, PostgresError, S3Error, NstError) as error:
        sys.exit(f"{parser.prog} {args.command}: {error}")
