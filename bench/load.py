"""Load: a 100- and a 500-job batch of tiny images through `nst run`, memory and overhead.

    .venv/bin/python bench/load.py --attribute   # 25x4 = 100 and 125x4 = 500 jobs, the 500
                                                 # again (every job skipped), then the 500 in
                                                 # process with timers; about 8 minutes
    .venv/bin/python bench/load.py --contents 10 --styles 2 --no-rerun --no-write  # a quick look

Each batch is 16 px, 2 iterations, on the CPU, png, in a fresh folder with a fresh
PREFECT_HOME, so `nst run` starts its own embedded Prefect server (a child process). While it
runs, the /proc of its process tree is sampled every 0.2 s: peak RSS of the flow process
(`nst run` itself), of the server, and of the whole tree at once. Engine time is what the
records say each job spent reading, optimising and writing (`timings` in every record);
orchestration overhead per job is the rest of the flow's own wall time (summary.json's
`wall_seconds`, and the whole flow run from its log), divided by the jobs. `--attribute`
splits that time further by running the flow in this process with timers around its device
slot (flows/batch.py itself unchanged). Results go to bench/results/load.json and into
BENCHMARKS.md between the `load-bench` markers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: `python bench/load.py`
    sys.path.insert(0, str(ROOT))

from PIL import Image, ImageDraw  # noqa: E402

from nst_core.batch.records import Record, Summary  # noqa: E402

SIZE, ITERATIONS = 16, 2
SAMPLE_S = 0.2
PAGE = resource.getpagesize()


# -- inputs -------------------------------------------------------------------------------
def draw(seed: int, kind: str) -> Image.Image:
    """A distinct 32x32 picture: contents are blocks on a sky, styles are strokes."""
    rng = random.Random(f"{kind}-{seed}")
    image = Image.new("RGB", (32, 32), tuple(rng.randrange(256) for _ in range(3)))
    pen = ImageDraw.Draw(image)
    for _ in range(6):
        colour = tuple(rng.randrange(256) for _ in range(3))
        x, y = rng.randrange(28), rng.randrange(28)
        if kind == "content":
            pen.rectangle([x, y, x + rng.randrange(3, 12), y + rng.randrange(3, 12)], fill=colour)
        else:
            pen.line([(x, y), (rng.randrange(32), rng.randrange(32))], fill=colour, width=3)
    return image


def write_batch(folder: Path, contents: int, styles: int, name: str) -> Path:
    """contents/*.png, styles/*.png and the manifest (16 px, 2 iterations, cpu, png)."""
    for kind, count in (("content", contents), ("style", styles)):
        (folder / f"{kind}s").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            draw(i, kind).save(folder / f"{kind}s" / f"{kind}-{i:04d}.png")
    manifest = folder / f"{name}.yaml"
    manifest.write_text(
        f"version: 1\nname: {name}\noutput: out\nformat: png\n"
        f"defaults: {{size: {SIZE}, iterations: {ITERATIONS}, device: cpu}}\n"
        "contents: [contents/*.png]\nstyles: [styles/*.png]\n"
    )
    return manifest


# -- the process tree ---------------------------------------------------------------------
def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                # The command name may hold spaces and parentheses; fields follow the last ")".
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _threads(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(x.split()[1]) for x in status if x.startswith("Threads:"))
    except (OSError, StopIteration, ValueError):
        return 0


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmd:
            return cmd.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


class Sampler:
    """Peak RSS of a process, of each descendant (by command line) and of the whole tree."""

    def __init__(self, root: int):
        self.root = root
        self.peak_root = self.peak_tree = self.peak_others = 0
        self.others: dict[int, str] = {}
        self.samples = 0
        self.started = time.perf_counter()
        self.timeline: list[tuple[float, float, int]] = []  # (s, flow process MB, threads)
        self.peak_threads = 0

    def sample(self) -> None:
        tree, pids, stack = _children(), [], [self.root]
        while stack:
            pid = stack.pop()
            pids.append(pid)
            stack.extend(tree.get(pid, []))
        sizes = {pid: _rss(pid) for pid in pids}
        for pid in pids[1:]:
            self.others.setdefault(pid, _cmdline(pid)[:120])
        self.peak_root = max(self.peak_root, sizes[self.root])
        self.peak_others = max(self.peak_others, sum(sizes.values()) - sizes[self.root])
        self.peak_tree = max(self.peak_tree, sum(sizes.values()))
        self.samples += 1
        threads = _threads(self.root)
        self.peak_threads = max(self.peak_threads, threads)
        now = time.perf_counter() - self.started
        if not self.timeline or now - self.timeline[-1][0] >= 1.0:  # one point a second
            self.timeline.append((round(now, 1), round(sizes[self.root] / 2**20), threads))


def run_batch(manifest: Path, prefect_home: Path, log: Path, timeout_s: float) -> dict:
    """`nst run MANIFEST` in a fresh process with its own embedded server; measured."""
    env = {
        **os.environ,
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("PREFECT_API_URL", None)
    env.pop("NST_MEMORY_BUDGET_GB", None)
    command = [sys.executable, "-m", "nst_cli", "run", str(manifest)]
    started, spawned = time.perf_counter(), datetime.now()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    sampler = Sampler(proc.pid)
    deadline = started + timeout_s
    pid = 0
    try:
        while True:
            # wait4 instead of Popen.wait: it also reports the process's own peak RSS.
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                raise TimeoutError(f"nst run took over {timeout_s:.0f} s; see {log}")
            sampler.sample()
            time.sleep(SAMPLE_S)
    finally:
        if not pid:  # timed out or interrupted: stop our own session (nst run, its server)
            os.killpg(proc.pid, signal.SIGKILL)
            os.waitpid(proc.pid, 0)
    wall = time.perf_counter() - started
    exited = datetime.now()
    proc.returncode = os.waitstatus_to_exitcode(status)
    _stop_leftovers(proc.pid)
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"nst run exited {proc.returncode}; last lines:\n{text[-3000:]}")
    return {
        "exit_code": proc.returncode,
        "process_wall_s": wall,
        "peak_rss_flow_mb": sampler.peak_root / 2**20,
        # wait4: the largest single process among nst run and the children it reaped.
        "peak_rss_flow_wait4_mb": usage.ru_maxrss / 1024,
        "peak_rss_server_mb": sampler.peak_others / 2**20,
        "peak_rss_tree_mb": sampler.peak_tree / 2**20,
        "rss_samples": sampler.samples,
        "peak_threads_flow": sampler.peak_threads,
        "timeline_flow": sampler.timeline,
        "children": sorted(set(sampler.others.values())),
        "log": text,
        **phases(text, spawned, exited),
    }


def phases(log: str, spawned: datetime, exited: datetime) -> dict:
    """Seconds of each phase of `nst run`, from its log's timestamps (local time, ms)."""
    marks = {
        "server": r"Starting temporary server",
        "flow": r"Beginning flow run",
        "flow_end": r"Flow run '[^']+' - Finished in state",
    }
    at = {"spawn": spawned}
    for name, pattern in marks.items():
        found = re.search(rf"^(\d\d:\d\d:\d\d\.\d\d\d) \| \w+ +\| .*{pattern}", log, re.M)
        if found:
            clock = datetime.strptime(found.group(1), "%H:%M:%S.%f").time()
            at[name] = datetime.combine(spawned.date(), clock)
    at["exit"] = exited
    if len(at) != 5:
        return {}
    span = lambda a, b: (at[b] - at[a]).total_seconds()  # noqa: E731
    return {
        "imports_s": span("spawn", "server"),
        "server_start_s": span("server", "flow"),
        "flow_run_s": span("flow", "flow_end"),
        "teardown_s": span("flow_end", "exit"),
    }


def _stop_leftovers(session: int) -> None:
    """Kill whatever of the run's own session outlived it (an orphaned server, say)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getsid(int(entry)) == session:
                os.kill(int(entry), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue


# -- one scenario -------------------------------------------------------------------------
def results_of(manifest: Path, log: str) -> tuple[Summary, list[Record]]:
    """The summary this run wrote (named in its output) and every record in the batch."""
    found = re.search(r"^summary:\s+(\S+)$", log, re.MULTILINE)
    if not found:
        raise RuntimeError(f"no summary line in the output of nst run:\n{log[-2000:]}")
    summary = Summary.model_validate_json(Path(found.group(1)).read_bytes())
    out = manifest.parent / "out"
    records = [Record.model_validate_json(p.read_bytes()) for p in sorted(out.glob("*.json"))]
    return summary, records


def measure(manifest: Path, prefect_home: Path, label: str, timeout_s: float) -> dict:
    load_before = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    run = run_batch(manifest, prefect_home, manifest.parent / f"{label}.log", timeout_s)
    log = run.pop("log")
    summary, records = results_of(manifest, log)
    totals = summary.totals
    this_run = {e.key for e in summary.jobs if e.status == "completed"}
    timings = [r.timings for r in records if r.key in this_run]
    engine = sum(sum(t.values()) for t in timings)
    optimize = sum(t.get("optimize_s", 0.0) for t in timings)
    jobs = totals.jobs
    units = re.search(r"(\d+) to run in (\d+) units", log)
    flow_run = run.get("flow_run_s")
    row = {
        "label": label,
        "jobs": jobs,
        "completed": totals.completed,
        "skipped": totals.skipped,
        "failed": totals.failed,
        "records": len(records),
        "units": int(units.group(2)) if units else None,
        # summary.json's wall_seconds: from the flow's start until every job has an entry
        # (planning, every unit, collecting); writing the report and artifacts come after.
        "jobs_phase_s": totals.wall_seconds,
        "engine_s": engine,
        "optimize_s": optimize,
        "overhead_per_job_s": (totals.wall_seconds - engine) / jobs,
        # The whole flow run, as its log says: the jobs phase plus report, contact sheet,
        # loss plot and artifacts.
        "flow_run_overhead_per_job_s": (flow_run - engine) / jobs if flow_run else None,
        "load_average_before": load_before,
        **run,
    }
    if row["completed"] + row["skipped"] != jobs or row["failed"] or row["records"] != jobs:
        raise RuntimeError(f"{label}: not every job completed once: {row}")
    return row


# -- report -------------------------------------------------------------------------------
def table(rows: list[dict]) -> str:
    lines = [
        "| run | jobs | units | completed / skipped | `nst run` wall, s | of which server start, s "
        "| flow run, s | jobs phase, s | engine, s | overhead per job, ms: jobs phase / flow run "
        "| peak RSS MB: flow process / server / whole tree |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        flow_run = r.get("flow_run_s")
        per_job = r.get("flow_run_overhead_per_job_s")
        lines.append(
            f"| {r['label']} | {r['jobs']} | {r['units']} | {r['completed']} / {r['skipped']} "
            f"| {r['process_wall_s']:.1f} | {_num(r.get('server_start_s'))} | {_num(flow_run)} "
            f"| {r['jobs_phase_s']:.1f} | {r['engine_s']:.1f} "
            f"| {1000 * r['overhead_per_job_s']:.0f} / {_num(per_job, 1000, '.0f')} "
            f"| {r['peak_rss_flow_mb']:.0f} / {r['peak_rss_server_mb']:.0f} "
            f"/ {r['peak_rss_tree_mb']:.0f} |"
        )
    return "\n".join(lines)


def _num(value: float | None, scale: float = 1, spec: str = ".1f") -> str:
    return "?" if value is None else format(value * scale, spec)


# -- where the overhead goes --------------------------------------------------------------
def attribute(manifest: Path, prefect_home: Path) -> dict:
    """Run the flow in this process with timers around its steps (flows/batch.py unchanged).

    The device slot is held by one unit at a time, so the jobs phase splits exactly into:
    before the first unit holds the slot, each unit holding it, releasing it, the slot lying
    free until the next unit's acquisition succeeds, and after the last release.
    """
    os.environ.update(
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
    )
    os.environ.pop("PREFECT_API_URL", None)
    import contextlib

    import flows.batch as batch
    import flows.execute as execute
    from flows import embedded

    marks: dict[str, float] = {}
    slots: list[tuple[float, float, float, float]] = []  # asked, held, released, returned
    real_concurrency, real_load, real_run_units = (
        execute.concurrency,
        batch.load_plan,
        batch.run_units,
    )

    @contextlib.contextmanager
    def timed_concurrency(*args, **kwargs):
        asked = time.perf_counter()
        with real_concurrency(*args, **kwargs):
            held = time.perf_counter()
            try:
                yield
            finally:
                released = time.perf_counter()
        slots.append((asked, held, released, time.perf_counter()))

    def timed_load(*args, **kwargs):
        marks.setdefault("flow_start", time.perf_counter())
        return real_load(*args, **kwargs)

    def timed_run_units(*args, **kwargs):
        entries = real_run_units(*args, **kwargs)
        marks["summarize"] = time.perf_counter()  # every job has its entry now
        return entries

    # Timers around the flow's steps, in this process only: instrumentation, not parts.
    execute.concurrency, batch.load_plan = timed_concurrency, timed_load
    batch.run_units = timed_run_units
    try:
        embedded.install()  # as `nst run`: its own embedded server, whose slots it may reset
        summary = batch.stylize_batch(str(manifest))
    finally:
        execute.concurrency, batch.load_plan = real_concurrency, real_load
        batch.run_units = real_run_units
    order = sorted(slots, key=lambda s: s[1])
    idle = [nxt[1] - cur[3] for cur, nxt in zip(order, order[1:], strict=False)]
    return {
        "jobs": summary.totals.jobs,
        "units": len(order),
        "jobs_phase_s": marks["summarize"] - marks["flow_start"],
        "before_first_unit_s": order[0][1] - marks["flow_start"],
        "units_holding_slot_s": sum(s[2] - s[1] for s in order),
        "releasing_slot_s": sum(s[3] - s[2] for s in order),
        "slot_free_between_units_s": sum(idle),
        "slot_free_median_s": sorted(idle)[len(idle) // 2] if idle else 0.0,
        "slot_free_max_s": max(idle, default=0.0),
        "after_last_unit_s": marks["summarize"] - order[-1][3],
    }


def attribution_text(a: dict) -> str:
    return (
        f"Where the jobs phase of one {a['jobs']}-job run ({a['units']} units) went, timed "
        f"in-process (`bench/load.py --attribute`): {a['jobs_phase_s']:.1f} s = "
        f"{a['before_first_unit_s']:.1f} s before the first unit held the device slot "
        f"(plan, hashing, records, task submission) + {a['units_holding_slot_s']:.1f} s of "
        f"units holding it (the engine, reading and writing) + {a['releasing_slot_s']:.1f} s "
        f"releasing it + **{a['slot_free_between_units_s']:.1f} s with the slot free between "
        f"units** (median {a['slot_free_median_s']:.2f} s, longest "
        f"{a['slot_free_max_s']:.1f} s) + {a['after_last_unit_s']:.1f} s after the last unit."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contents", type=int, nargs="*", default=[25, 125])
    parser.add_argument("--styles", type=int, default=4)
    parser.add_argument("--no-rerun", action="store_true", help="skip the all-skipped rerun")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per nst run")
    parser.add_argument("--keep", action="store_true", help="keep the work folders")
    parser.add_argument("--no-write", action="store_true", help="print only; no results files")
    parser.add_argument(
        "--attribute", action="store_true", help="also time the flow's steps for the last size"
    )
    parser.add_argument("--attribute-one", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attribute_one:  # the child process of --attribute
        print(json.dumps(attribute(args.attribute_one, args.attribute_one.parent / "home-a")))
        return

    from bench.common import machine

    rows, attribution, version = [], None, code_version()  # before the code can change
    work = Path(tempfile.mkdtemp(prefix="nst-load-"))
    try:
        for n_contents in args.contents:
            jobs = n_contents * args.styles
            folder = work / f"jobs-{jobs}"
            manifest = write_batch(folder, n_contents, args.styles, f"load-{jobs}")
            home = folder / "prefect-home"
            rows.append(measure(manifest, home, f"{jobs} jobs", args.timeout))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
        if not args.no_rerun:
            rows.append(measure(manifest, home, f"{jobs} jobs again (all skipped)", args.timeout))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
        if args.attribute:
            fresh = write_batch(work / "attribute", args.contents[-1], args.styles, "attribute")
            out = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--attribute-one", str(fresh)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=args.timeout,
                check=True,
            )
            attribution = json.loads(
                next(x for x in reversed(out.stdout.splitlines()) if x.startswith("{"))
            )
            print(attribution_text(attribution), flush=True)
    finally:
        if args.keep:
            print(f"work folders kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(table(rows))
    if args.no_write:
        return
    described = machine()
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "load.json").write_text(
        json.dumps(
            {
                "machine": described,
                "commit": version,
                "size": SIZE,
                "iterations": ITERATIONS,
                "runs": rows,
                "attribution": attribution,
            },
            indent=2,
        )
    )
    from bench.common import write_section

    write_section("load-bench", section(rows, described, attribution, version))


def code_version() -> str:
    """The commit measured, and whether the code differed from it (the flow's design decides
    most of the overhead, so results are only comparable at the same code)."""
    try:
        git = {"cwd": ROOT, "capture_output": True, "text": True, "timeout": 30}
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **git).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "flows", "nst_core"], **git)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (
        f"{commit}{' with uncommitted changes to flows/ or nst_core/' if dirty.returncode else ''}"
    )


def section(rows: list[dict], described: str, attribution: dict | None, version: str) -> str:
    text = (
        f"`.venv/bin/python bench/load.py{' --attribute' if attribution else ''}` at commit "
        f"{version} on {described}; {SIZE} px, "
        f"{ITERATIONS} iterations, cpu, png, 4 styles; each run a fresh `nst run` with its own "
        "embedded Prefect server.\n\n" + table(rows)
    )
    return text + ("\n\n" + attribution_text(attribution) if attribution else "")


if __name__ == "__main__":
    main()
