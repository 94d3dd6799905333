"""A batch's progress while its units run: the flow run's progress artifact, and the terminal
of an `nst run` that runs the flow in its own process.

Units report at every evaluation and at every job they finish (nst_core/batch/progress.py).
A unit on one of this process's threads reports into its batch's `Tally`, found by the
progress artifact's id (a flow or task parameter cannot carry a callback); the tally publishes
the artifact at once when a job finished and otherwise every PUBLISH_EVERY_S while the work
moves, and passes every report to the display `nst run` installed, if any. A unit elsewhere
(a Ray worker) keeps a progress artifact of its own on its task run, published the same way,
which the flow reads every POLL_EVERY_S while it waits and folds into the batch's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from logging import Logger, LoggerAdapter
from typing import Any, Protocol, cast
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture, as_completed

from nst_core.batch.escape import log_text, markdown_text
from nst_core.batch.progress import Throttle, UnitProgress, UnitReport

# Reports come at every evaluation (well under a second each at the sizes a batch runs), so
# the work between two updates is at most this plus one evaluation: under 30 s.
PUBLISH_EVERY_S = 15.0
# How often the flow reads the progress artifacts of units on other workers.
POLL_EVERY_S = 10.0


@dataclass(frozen=True)
class BatchView:
    """The batch at one moment, for a display."""

    jobs: int  # to run in this flow run
    finished: int  # of those, finished (completed, failed, skipped or left to another run)
    done: float  # finished, plus the running jobs' share of their evaluations
    units: dict[str, UnitProgress] = field(default_factory=dict)  # running here, by label


class Display(Protocol):
    """Where `nst run` shows a batch's progress (nst_cli/batch_progress.py)."""

    def show(self, view: BatchView) -> None: ...

    def close(self) -> None: ...


_display: Display | None = None
_tallies: dict[UUID, Tally] = {}
_registry = threading.Lock()


def install_display(display: Display | None) -> None:
    """Show the batches this process runs on `display` (None: nowhere)."""
    global _display
    _display = display


def displayed() -> Display | None:
    """The display installed in this process, if any."""
    return _display


def tally_for(artifact: UUID | None) -> Tally | None:
    """The tally of the batch whose progress artifact is `artifact`, when that batch runs in
    this process; None on another worker."""
    with _registry:
        return _tallies.get(artifact) if artifact else None


@contextmanager
def registered(artifact: UUID, tally: Tally) -> Iterator[Tally]:
    """`tally` found by its artifact's id while the batch's units run; its display closed
    after, however they end."""
    with _registry:
        _tallies[artifact] = tally
    try:
        yield tally
    finally:
        with _registry:
            _tallies.pop(artifact, None)
        tally.close()


class Tally:
    """A batch's progress: jobs of the units that returned, plus each running unit's."""

    def __init__(
        self,
        jobs: int,
        publish: Callable[[float], None],
        display: Display | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        every_s: float | None = None,  # PUBLISH_EVERY_S, read when the batch starts
    ) -> None:
        self.jobs = max(jobs, 1)
        self.publish = publish  # the artifact's new value, in percent
        self.display = display
        self.throttle = Throttle(PUBLISH_EVERY_S if every_s is None else every_s, clock=clock)
        self.returned = 0
        self.units: dict[str, UnitProgress] = {}
        self.remote: dict[str, float] = {}  # jobs done of units elsewhere, as last read
        self.lock = threading.Lock()
        self.publishing = threading.Lock()
        self.shown = BatchView(jobs, 0, 0.0)

    def unit(self, label: str, progress: UnitProgress) -> None:
        """A unit's report, from the thread it runs on."""
        with self.lock:
            self.units[label] = progress
        self._update()

    def unit_remote(self, label: str, jobs_done: float) -> None:
        """A unit on another worker, as its own artifact says. Published at once when it
        moved: these are read every POLL_EVERY_S already."""
        with self.lock:
            self.remote[label] = jobs_done
        self._update(at_once=True)

    def unit_returned(self, label: str, jobs: int) -> None:
        """A unit's task returned (or failed for good): all its jobs are finished."""
        with self.lock:
            self.units.pop(label, None)
            self.remote.pop(label, None)
            self.returned += jobs
        self._update()

    def close(self) -> None:
        if self.display:
            self.display.close()

    def _show(self, view: BatchView) -> None:
        if not self.display:
            return
        try:
            self.display.show(view)
        except Exception:
            # This runs inside the engine's loop: a display that breaks must not fail the
            # unit. The artifact and the logs still say how the batch goes.
            self.display = None

    def _update(self, at_once: bool = False) -> None:
        with self.lock:
            units = dict(self.units)
            finished = self.returned + sum(u.finished for u in units.values())
            done = self.returned + sum(u.jobs_done for u in units.values())
            done += sum(self.remote.values())
            # Never backwards: a unit split after running out of memory starts its halves
            # from zero, and a retried unit its jobs, which it then finds done.
            view = BatchView(
                self.shown.jobs,
                max(finished, self.shown.finished),
                min(max(done, self.shown.done), float(self.jobs)),
                units,
            )
            self.shown = view
            due = self.throttle.due(view.finished, view.done, at_once=at_once)
            self._show(view)  # under the lock: a display never gets an older view after
        if due:
            with self.publishing:  # one at a time, and never an older value after a newer
                self.publish(100.0 * self.shown.done / self.jobs)


class UnitArtifact:
    """A unit's own progress artifact, for a unit on a worker the batch's tally is not on:
    published as the tally publishes the batch's, for the flow to read."""

    def __init__(
        self,
        update: Callable[[float], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        every_s: float = PUBLISH_EVERY_S,
    ) -> None:
        self.update = update  # the artifact's new value, in percent
        self.throttle = Throttle(every_s, clock=clock)

    def __call__(self, progress: UnitProgress) -> None:
        if self.throttle.due(progress.finished, progress.jobs_done):
            self.update(100.0 * progress.jobs_done / max(progress.jobs, 1))


def poll_remote(
    tally: Tally, running: dict[UUID, tuple[str, int]], logger: Logger | LoggerAdapter
) -> None:
    """Fold the progress artifacts of units running elsewhere into the batch's: `running`
    is each unit's task run id -> (its label, its number of jobs). A read that fails is
    logged and waits for the next poll: it must not end the batch."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterTaskRunId,
        ArtifactFilterType,
    )

    wanted = ArtifactFilter(
        task_run_id=ArtifactFilterTaskRunId(any_=list(running)),
        type=ArtifactFilterType(any_=["progress"]),
    )
    try:
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(artifact_filter=wanted)
    except Exception as exc:
        logger.warning("progress of the units on other workers not read: %s", log_text(exc))
        return
    for artifact in found:
        unit = running.get(artifact.task_run_id) if artifact.task_run_id else None
        if unit and isinstance(artifact.data, int | float):
            label, jobs = unit
            tally.unit_remote(label, jobs * float(artifact.data) / 100.0)


def unit_report(
    artifact: UUID | None, label: str, logger: Logger | LoggerAdapter
) -> UnitReport | None:
    """Where the unit `label` of the batch whose progress artifact is `artifact` reports:
    into the batch's tally when it runs in this process, else into a progress artifact of
    the unit's own task run, which the flow reads (a unit on a Ray worker)."""
    tally = tally_for(artifact)
    if tally:
        return partial(tally.unit, label)
    if artifact is None:
        return None

    description = f"{markdown_text(label)}: jobs finished"
    try:
        own = cast(UUID, create_progress_artifact(0.0, description=description))
    except Exception as exc:  # as for an update: no progress shown is no reason to fail
        logger.warning("progress not published: %s", log_text(exc))
        return None
    return UnitArtifact(lambda value: publish(own, value, logger))


def publish(artifact: UUID, value: float, logger: Logger | LoggerAdapter) -> None:
    """Progress is there to be watched: an update the API refuses is logged, and fails no
    unit."""
    try:
        update_progress_artifact(artifact, value)
    except Exception as exc:
        logger.warning("progress not published: %s", log_text(exc))


def as_completed_polling(
    futures: list[PrefectFuture[Any]],
    deadline: float,
    poll_s: float | None,
    poll: Callable[[], None],
) -> Iterator[PrefectFuture[Any]]:
    """`futures` as they complete, calling `poll` every `poll_s` (None: never) while none
    does; TimeoutError once the time.monotonic() `deadline` passes."""
    pending = list(futures)
    while pending:
        remaining = max(deadline - time.monotonic(), 0.001)
        try:
            for future in as_completed(pending, timeout=min(remaining, poll_s or remaining)):
                pending.remove(future)
                yield future
        except TimeoutError:
            if poll_s is None or time.monotonic() >= deadline:
                raise
            poll()
