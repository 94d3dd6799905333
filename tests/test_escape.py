"""Untrusted names shown as text: file names, URIs, job labels and errors holding Markdown,
HTML or control characters go into report.md and Prefect's artifacts escaped, and into log
lines on one line."""

from __future__ import annotations

import logging
import re

import pytest
from imagegen import job_for

# At import, not in a test: importing Prefect runs `file` once, and a fast-lane test may
# start no process.
from flows import artifacts
from flows.execute import _log_outcome, _unit_entries, unit_label
from nst_core.batch.escape import log_text, markdown_code, markdown_text, visible
from nst_core.batch.layout import RunLayout
from nst_core.batch.records import JobEntry, Summary
from nst_core.batch.report import markdown_report
from nst_core.batch.runner import Outcome
from nst_core.engine.params import StyleParams

LINK = "[clickme](javascript:alert(1)).jpg"
BOLD = "<b>x.jpg"  # a name holds no "/": the tag is left open, and still bolds
LINES = "a|b\r\nINFO fake\x1b[2J.png"
ERROR = "boom <b>bold</b> [x](javascript:alert(2)) | cell\r\n| fake | row |"
# An unescaped `|` in a Markdown table row: a cell boundary.
CELL = re.compile(r"(?<!\\)\|")
SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)")  # a code span, as CommonMark finds them


def hostile_summary(tmp_path) -> tuple[RunLayout, Summary]:
    """Three jobs over hostile content names, one failed with a hostile error; no files."""
    layout = RunLayout(str(tmp_path / "out"))
    entries = []
    for index, name in enumerate([LINK, BOLD, LINES]):
        job = job_for(
            str(tmp_path / name),
            ((str(tmp_path / "s<i>.png"), 1.0),),
            StyleParams(size=64),
            output_dir=layout.base,
            sha_of=lambda uri: "0" * 64,
        )
        failed = index == 2
        entries.append(
            JobEntry.of(job, "failed", error=ERROR) if failed else JobEntry.of(job, "completed")
        )
    return layout, Summary.of("run`1 <b>", str(tmp_path / "[m](javascript:x).yaml"), entries, 1.0)


def test_the_report_shows_hostile_names_and_errors_as_text(tmp_path):
    layout, summary = hostile_summary(tmp_path)
    report = markdown_report(summary, layout)
    # The run, manifest and gallery lines hold names in code spans, where Markdown shows
    # everything literally; outside them nothing may be a tag or a link.
    assert report.startswith("# Style transfer run ``run`1 <b>``\n")
    assert f"Manifest: `{tmp_path}/[m](javascript:x).yaml`\n" in report
    text = SPAN.sub("", report)
    assert "<b>" not in text and "<i>" not in text and "](javascript:" not in text
    assert r"\[clickme\]\(javascript:alert\(1\)\).jpg x s\<i\>.png" in report
    assert r"\<b\>x.jpg x s\<i\>.png" in report
    assert r"a\|b\\r\\nINFO fake\\x1b\[2J.png x s\<i\>.png" in report
    assert (
        r"boom \<b\>bold\</b\> \[x\]\(javascript:alert\(2\)\) \| cell\\r\\n\| fake \| row \|"
        in report
    )
    lines = report.splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + len(summary.jobs)  # no name or error broke a row in two
    assert all(len(CELL.findall(row)) == 8 for row in table), table
    assert lines.index(table[0]) + len(table) == len(lines)  # and no row lies outside it


def test_the_job_table_artifact_shows_names_as_text(tmp_path, monkeypatch):
    """Prefect's UI renders the table's cells and description as Markdown."""
    made = {}
    monkeypatch.setattr(
        artifacts, "create_table_artifact", lambda rows, **kw: made.update(kw, rows=rows)
    )
    monkeypatch.setattr(artifacts, "create_markdown_artifact", lambda md, **kw: made.update(md=md))
    _, summary = hostile_summary(tmp_path)
    artifacts.publish(summary, "the report", "hostile")
    jobs = [row["job"] for row in made["rows"]]
    assert jobs == [markdown_text(entry.label) for entry in summary.jobs]
    assert jobs[0].startswith(r"\[clickme\]\(javascript:alert\(1\)\).jpg x ")
    assert made["rows"][2]["output"] == markdown_text(ERROR)
    assert made["rows"][0]["output"] == markdown_text(summary.jobs[0].output)
    assert made["description"] == r"run\`1 \<b\>"
    text = repr(made["rows"]) + made["description"]
    assert "<b>" not in text and "](javascript:" not in text and "\\r\\n|" not in text
    assert made["md"] == "the report"


def test_log_lines_of_a_job_stay_one_line(tmp_path, caplog):
    job = job_for(
        str(tmp_path / "a\r\nINFO completed everything.png"),
        ((str(tmp_path / "s\x1b[31m.png"), 1.0),),
        StyleParams(size=64),
        output_dir=str(tmp_path / "out"),
        sha_of=lambda uri: "0" * 64,
    )
    logger = logging.getLogger("nst-test-escape")

    class Broken:
        def result(self) -> None:
            raise RuntimeError("unit died\nCRITICAL fake")

    with caplog.at_level(logging.INFO, logger=logger.name):
        _log_outcome(logger, Outcome(job, "failed", error="bad\r\nINFO fake line"))
        _log_outcome(logger, Outcome(job, "elsewhere"))
        _unit_entries(Broken(), [job], logger)  # type: ignore[arg-type]
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 3
    assert messages[0] == (
        r"failed a\r\nINFO completed everything.png x s\x1b[31m.png: bad\r\nINFO fake line"
    )
    assert all(not re.search(r"[\r\n\x1b]", message) for message in messages), messages
    assert r"unit died\nCRITICAL fake" in messages[2]
    label = unit_label(0, 1, [job])  # the task run's name, which Prefect logs itself
    assert r"a\r\nINFO completed everything.png" in label and "\n" not in label


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain name.jpg", "plain name.jpg"),
        ("a\nb\rc\td", r"a\nb\rc\td"),
        ("esc\x1b[2J del\x7f nel\x85", r"esc\x1b[2J del\x7f nel\x85"),
        ("line\u2028para\u2029rtl\u202eend", r"line\u2028para\u2029rtl\u202eend"),
        ("bad\udcffbyte", r"bad\udcffbyte"),
        ("café 東京 ünïcode", "café 東京 ünïcode"),
    ],
)
def test_visible_writes_what_is_not_printable_as_its_escape(raw, shown):
    assert visible(raw) == shown == log_text(raw)


def test_markdown_text_escapes_every_character_markdown_gives_meaning():
    assert markdown_text(r"\`*_[]()<>#|!~&") == r"\\\`\*\_\[\]\(\)\<\>\#\|\!\~\&"
    assert markdown_text("a\nb") == r"a\\nb"  # renders as a\nb, on its line
    assert markdown_text(None) == "None"
    assert markdown_text("photo 1.jpg") == "photo 1.jpg"


@pytest.mark.parametrize(
    ("raw", "span"),
    [
        ("s3://b/out/_runs/r", "`s3://b/out/_runs/r`"),
        ("a`b", "``a`b``"),
        ("`a``", "``` `a`` ```"),
        ("x\ny <b>", r"`x\ny <b>`"),
    ],
)
def test_markdown_code_fences_past_any_backticks_inside(raw, span):
    assert markdown_code(raw) == span
