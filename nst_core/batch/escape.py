"""Names from outside (file names, URIs, job labels, error text) made safe to show: as text
in Markdown (report.md, Prefect's artifacts) and on one line in a log.

A file may be named `[x](javascript:…).jpg`, `<b>x</b>.png` or `a\\r\\nINFO done.jpg`: shown
raw, Markdown would make a link or bold of it and a log would print a line nobody wrote.
Characters that are not printable (as `str.isprintable` and `repr` decide: control
characters, line and paragraph separators, bidirectional overrides, stray surrogates) are
written as their escapes, `\\n`, `\\x1b`, `\\u2028`, so they stay visible and on one line.
"""

from __future__ import annotations

import re

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Every character CommonMark or GitHub's tables and strikethrough give meaning to inside a
# line, and the ones that start HTML; CommonMark lets any ASCII punctuation be escaped.
_MARKDOWN = re.compile(r"[\\`*_\[\]()<>#|!~&]")
_BACKTICKS = re.compile(r"`+")


def visible(text: str) -> str:
    """`text` on one line: each character that is not printable written as its escape."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def log_text(value: object) -> str:
    """A user-controlled value (name, URI, label, error) as a log message may hold it."""
    return visible(str(value))


def markdown_text(value: object) -> str:
    """`value` as Markdown text that renders as exactly what `visible` shows: no link,
    emphasis, HTML, table cell break or new line can come from it."""
    return _MARKDOWN.sub(r"\\\g<0>", visible(str(value)))


def markdown_code(value: object) -> str:
    """`value` as a Markdown code span (its text is literal there, so nothing but backticks
    needs care): fenced by more backticks than it holds in a row, as CommonMark allows."""
    text = visible(str(value))
    fence = "`" * (max((len(run) for run in _BACKTICKS.findall(text)), default=0) + 1)
    # A span's content loses one space at each end, and a backtick there would join the fence.
    pad = " " if text[:1] in ("`", " ") or text[-1:] in ("`", " ") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
