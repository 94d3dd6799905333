"""The error types users see. Each carries a message fit to print as one line per problem."""

from __future__ import annotations


class NstError(Exception):
    """Base of every expected failure: bad input, bad parameters, storage or model problems."""


class ParamsError(NstError, ValueError):
    """One or more parameters are invalid; `problems` lists each as `key: reason`."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class ImageError(NstError, ValueError):
    """An input image cannot be used: missing, unreadable, too large or too small."""


class WeightsError(NstError, RuntimeError):
    """VGG19 weights cannot be loaded from the requested source."""
