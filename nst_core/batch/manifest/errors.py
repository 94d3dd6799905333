"""How a manifest's problems are gathered and reported: every one at once, each as a
`FILE: key.path[index]: what was expected, what was found` line, and at most MAX_PROBLEMS of
them listed so that a hostile file cannot flood a log.
"""

from __future__ import annotations

from collections.abc import Iterable

from nst_core.errors import NstError

MAX_PROBLEMS = 100  # listed; beyond that a count, so a hostile file cannot flood a log


class ManifestError(NstError):
    """The manifest is invalid; `problems` holds one `FILE: key: reason` line per problem."""

    def __init__(self, problems: list[str]):
        problems = list(problems)
        if len(problems) > MAX_PROBLEMS:
            more = len(problems) - MAX_PROBLEMS
            problems = [*problems[:MAX_PROBLEMS], f"... and {more:,} more problems"]
        self.problems = problems
        super().__init__("\n".join(self.problems))


class Problems:
    """The problems of one manifest in the order found, each line led by the manifest's URI."""

    def __init__(self, uri: str):
        self.uri = uri
        self.lines: list[str] = []

    def add(self, *parts: str) -> None:
        """One problem: `add("contents[0]", "why")` records `URI: contents[0]: why`."""
        self.lines.append(": ".join((self.uri, *parts)))

    def extend(self, problems: Iterable[str], *where: str) -> None:
        """Several problems, all at the same place (`where`, or the manifest as a whole)."""
        for problem in problems:
            self.add(*where, problem)

    def __bool__(self) -> bool:
        return bool(self.lines)

    def raise_if_any(self) -> None:
        if self.lines:
            raise ManifestError(self.lines)
