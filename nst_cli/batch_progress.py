"""`nst run`'s view of a batch while its units run, on stderr.

On a terminal, live bars: the batch's jobs, and the evaluations of each unit running in this
process. Prefect's log lines print above the bars meanwhile. Elsewhere (a log file, CI),
plain lines: one at the first evaluation, then one every LINE_EVERY_S while the work moves,
so a log is never silent for long and never flooded.

`nst run` runs the flow in its own process, on threads, so its units report here through
the display installed in flows/progress.py (a flow parameter cannot carry a callback). Units
on Ray workers report only to their artifacts, which the flow reads every few seconds: the
jobs bar follows them, and no unit bar shows.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from flows import progress
from flows.progress import BatchView
from nst_core.batch.progress import Throttle

# Plain lines: one at most this often (the first at the first evaluation).
LINE_EVERY_S = 15.0
LABEL_CHARS = 48  # a unit's label on its bar, at most


def install(console: Console | None = None) -> None:
    """Show the batches this process runs on stderr: bars on a terminal, lines elsewhere."""
    console = console or Console(stderr=True)
    display: progress.Display = Bars(console) if console.is_terminal else Lines(_write_stderr)
    progress.install_display(display)


def _write_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def progress_line(view: BatchView) -> str:
    """One line: the jobs, then each running unit's evaluations."""
    parts = [f"progress: {view.finished}/{view.jobs} jobs done ({view.done / view.jobs:.0%})"]
    parts += [
        f"{label}: {unit.evaluations}/{unit.budget or '?'} evaluations"
        for label, unit in view.units.items()
        if unit.running
    ]
    return "; ".join(parts)


class Lines:
    """Plain progress lines, throttled: for stderr that is not a terminal."""

    def __init__(
        self,
        write: Callable[[str], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        every_s: float = LINE_EVERY_S,
    ) -> None:
        self.write = write
        self.throttle = Throttle(every_s, per_job=False, first_at_once=True, clock=clock)

    def show(self, view: BatchView) -> None:
        if self.throttle.due(view.finished, view.done):
            self.write(progress_line(view))

    def close(self) -> None:
        pass


class Bars:
    """Live bars on a terminal: the jobs, and one bar per unit running here over its
    evaluations. Started at the first report, gone (transient) when the units are."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bars = self._bars()
        self.jobs: TaskID | None = None  # set while the bars show
        self.units: dict[str, TaskID] = {}
        self.rerouted: list[tuple[logging.Handler, Any]] = []

    def _bars(self) -> Progress:
        return Progress(
            TextColumn("{task.description}", markup=False),  # labels hold file names
            BarColumn(),
            TextColumn("{task.fields[count]}", markup=False),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )

    def show(self, view: BatchView) -> None:
        if self.jobs is None:
            self.bars = self._bars()  # a batch's own, should a process run another
            self.bars.start()
            self._log_above()
            self.jobs = self.bars.add_task("jobs", total=view.jobs, count="")
        bars = self.bars
        bars.update(self.jobs, completed=view.done, count=f"{view.finished}/{view.jobs} jobs")
        for label in set(self.units) - set(view.units):
            bars.remove_task(self.units.pop(label))
        for label, unit in view.units.items():
            if label not in self.units:
                short = label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…"
                self.units[label] = bars.add_task(short, total=None, count="")
            count = f"{unit.evaluations}/{unit.budget or '?'} evals"
            count += f" of {unit.running} jobs" if unit.running else ""
            total = unit.budget or None
            bars.update(self.units[label], completed=unit.evaluations, total=total, count=count)

    def close(self) -> None:
        if self.jobs is None:
            return
        self.bars.stop()
        for handler, console in self.rerouted:
            setattr(handler, "console", console)  # noqa: B010
        self.rerouted, self.jobs, self.units = [], None, {}

    def _log_above(self) -> None:
        """Log handlers that print through a rich Console of their own (Prefect's) print
        through the bars' console meanwhile: lines written around a live display from
        another console would be drawn over by it."""
        loggers = [logging.getLogger()] + [
            logger
            for logger in logging.Logger.manager.loggerDict.values()
            if isinstance(logger, logging.Logger)
        ]
        handlers = {id(h): h for logger in loggers for h in logger.handlers}
        for handler in handlers.values():
            own = getattr(handler, "console", None)
            if isinstance(own, Console):
                self.rerouted.append((handler, own))
                setattr(handler, "console", _PrintedAbove(own, self.console))  # noqa: B010


class _PrintedAbove:
    """Stands in for a log handler's console while the bars show: each line rendered by
    that console (its colours and highlighting), then printed above the bars."""

    def __init__(self, own: Console, bars: Console) -> None:
        self.own = own
        self.bars = bars

    def print(self, *objects: Any, **kwargs: Any) -> None:
        with self.own.capture() as captured:
            self.own.print(*objects, **kwargs)
        self.bars.print(Text.from_ansi(captured.get()), end="", soft_wrap=True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.own, name)
