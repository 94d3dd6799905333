"""The few Prefect REST calls the stack makes, over the standard library.

The stack talks to a server it may have just started, from a short-lived command: plain
JSON requests, no client library state, nothing to drain before exiting.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any


class ApiError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def call(api_url: str, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
    """`method` `api_url/path` with a JSON body; the decoded answer (None when empty)."""
    request = urllib.request.Request(
        f"{api_url}/{path.lstrip('/')}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            text = answer.read()
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")[:300]
        raise ApiError(error.code, f"{method} {path}: HTTP {error.code} {detail}") from None
    return json.loads(text) if text else None


def healthy(api_url: str) -> bool:
    try:
        return call(api_url, "GET", "health", timeout=2) is True
    except (OSError, ApiError, ValueError):
        return False
