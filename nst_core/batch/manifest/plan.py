"""What a manifest expands to: the Plan of a batch, a JobSpec per output to make, with every
URI resolved and every glob expanded but no input read yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from nst_core.engine.params import StyleParams


@dataclass(frozen=True)
class JobSpec:
    """One output to make, before its inputs are read: URIs and resolved parameters."""

    content: str
    styles: tuple[tuple[str, float], ...]  # (uri, blend weight)
    params: StyleParams
    source: str  # where in the manifest it came from, for messages: contents x styles / pairs[i]


@dataclass(frozen=True)
class Plan:
    """A validated manifest with every URI resolved and every glob expanded."""

    uri: str
    name: str
    output: str
    format: str
    jobs: list[JobSpec]
    n_contents: int
    n_styles: int
    n_pair_jobs: int
    sha256: str = ""  # of the manifest's bytes, as read

    def summary(self) -> str:
        """`4 jobs (2 contents x 2 styles + 0 pairs)`; when some pairs ask for the same job,
        `8 pairs, 5 distinct jobs (...)`, the count the run will do."""
        distinct = len({(j.content, j.styles, j.params) for j in self.jobs})
        count = (
            f"{len(self.jobs)} jobs"
            if distinct == len(self.jobs)
            else f"{len(self.jobs)} pairs, {distinct} distinct jobs"
        )
        return (
            f"{count} ({self.n_contents} contents x {self.n_styles} styles"
            f" + {self.n_pair_jobs} pairs)"
        )
