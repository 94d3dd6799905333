"""The planner's memory decisions for a set of jobs, in one place for the flow and
`nst stylize`: which devices they may use, that device's memory budget, and how each job
runs within it (whole, in tiles, L-BFGS history on the host) or that it cannot.
"""

from __future__ import annotations

from dataclasses import dataclass

from nst_core.batch import units
from nst_core.batch.jobs import Job


@dataclass(frozen=True)
class MemoryFit:
    devices: list[str]  # the concrete devices the jobs may spread over
    budget: int  # bytes, per device
    fitting: list[Job]  # each with its Execution set to fit the budget
    unfit: list[tuple[Job, int]]  # (job, the least it needs) for jobs that fit no way

    def reason(self, job: Job, need: int) -> str:
        return units.unfit_reason(job, need, self.budget)


def fit_memory(jobs: list[Job], device: str, budget_bytes: int | None = None) -> MemoryFit:
    """Fit `jobs` to the budget of the first device `device` (a StyleParams device setting)
    stands for: `budget_bytes` (the settings' NST_MEMORY_BUDGET_GB) or the device's own."""
    from nst_core.engine.devices import devices_for  # torch: only once there is work

    devices = devices_for(device)
    budget = units.memory_budget_bytes(devices[0], budget_bytes)
    host_history = units.history_may_go_to_host(devices[0])
    fitting, unfit = units.split_unfit(jobs, budget, host_history=host_history)
    return MemoryFit(devices=devices, budget=budget, fitting=fitting, unfit=unfit)
