"""The run gallery (index.html beside summary.json) in a real browser: Debian's Chromium,
driven by Playwright. One real 2x2 run with one failed job on SeaweedFS, rerun once; its page
is browsed through `nst gallery --serve` and, copied to local disk, from file://."""

from __future__ import annotations

import contextlib
import http.client
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import pytest
from imagegen import write_batch

from bench.gallery import CHROMIUM, CHROMIUM_ARGS, synthetic_run
from nst_core.batch import storage
from nst_core.batch.gallery import write_gallery
from nst_core.batch.gallery_server import GalleryServer, resolve
from nst_core.batch.layout import RUNS, THUMBS, RunLayout

# 2 contents x 2 styles as explicit pairs; b x s2 asks for 3000 px without tiles, which no
# CPU budget holds, so it fails alone before any optimisation (quickly, and every time).
MANIFEST = """version: 1
name: tiny
output: out
format: png
defaults: {size: 32, iterations: 3, history_every: 1, device: cpu, precision: fp32}
pairs:
  - {content: photos/a.png, style: paintings/s1.png}
  - {content: photos/a.png, style: paintings/s2.png}
  - {content: photos/b.png, style: paintings/s1.png}
  - {content: photos/b.png, style: paintings/s2.png, params: {size: 3000, tile: "off"}}
"""
# Functions, not expressions: Playwright evaluates an expression with eval(), which the
# page's Content-Security-Policy forbids.
IMAGES_DONE = "() => Array.from(document.images).every(i => i.complete)"
VISIBLE_JOBS = "Array.from(document.querySelectorAll('figure.job:not([hidden])'))"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: `make test` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def s3_runs(s3_server, prefect_server):
    """The 2x2 batch run twice on S3; which thumbnails each run wrote."""
    from flows.batch import stylize_batch

    root = f"s3://gallery-{uuid.uuid4().hex[:12]}"
    storage.s3_client().create_bucket(Bucket=root[5:])
    manifest = write_batch(root, MANIFEST)
    written: list[list[str]] = []
    outputs_read: list[Counter] = []  # per run: how often each output image was read
    real_write, real_read = storage.write_bytes, storage.read_bytes

    def spy(uri, data, content_type=None):
        if "/_runs/_thumbs/" in str(uri):
            written[-1].append(uri)
        return real_write(uri, data, content_type)

    def read_spy(uri, *args, **kwargs):
        if str(uri).startswith(f"{root}/out/") and str(uri).endswith(".png"):
            outputs_read[-1][uri] += 1
        return real_read(uri, *args, **kwargs)

    states = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(storage, "write_bytes", spy)
        patch.setattr(storage, "read_bytes", read_spy)
        for _ in range(2):
            written.append([])
            outputs_read.append(Counter())
            states.append(stylize_batch(manifest, return_state=True))
    runs = sorted(
        storage.parent(u)
        for u in storage.list_prefix(f"{root}/out/_runs")
        if u.endswith("/summary.json")
    )
    assert len(runs) == 2 and all(state.is_failed() for state in states)
    return SimpleNamespace(
        root=root, manifest=manifest, runs=runs, written=written, outputs_read=outputs_read
    )


def open_page(browser, url: str):
    """A fresh page at `url` with every request, dialog and script error it makes recorded."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    seen = SimpleNamespace(requests=[], dialogs=[], errors=[])
    page.on("request", lambda request: seen.requests.append(request.url))
    page.on("dialog", lambda dialog: (seen.dialogs.append(dialog.message), dialog.dismiss()))
    page.on("pageerror", lambda error: seen.errors.append(str(error)))
    page.goto(url, wait_until="load")
    page.wait_for_function(IMAGES_DONE)
    return page, seen


def thumbnail_widths(page) -> dict[str, int]:
    return page.evaluate(
        "Object.fromEntries(Array.from(document.images).map(i => "
        "[i.getAttribute('src'), i.naturalWidth]))"
    )


def links(page) -> list[str]:
    """Every URL the page links or loads, resolved."""
    return page.evaluate(
        "Array.from(document.querySelectorAll('a[href], img[src]')).map(e => e.href || e.src)"
    )


def check_the_2x2_page(page, seen, prefix: str) -> None:
    """What both ways of opening the page must show: every thumbnail, the failure in place,
    a working status filter, the detail of a job, and nothing from outside `prefix`."""
    widths = thumbnail_widths(page)
    assert len(widths) == 2 + 2 + 3  # content and style headers, 3 outputs
    assert all(width > 0 for width in widths.values()), widths
    captions = page.locator("figure.job:not(.failed) figcaption").all_inner_texts()
    assert len(captions) == 3  # final losses and seconds, from this run or an earlier one
    assert all(re.match(r"style \S+ · content \S+ · \d+\.\d s", c) for c in captions), captions
    failed = page.locator("figure.job.failed")
    assert failed.count() == 1
    assert "over the memory budget" in failed.locator(".error").inner_text()
    assert "b.png x s2.png" in failed.get_attribute("aria-label")
    page.select_option("#status", "failed")
    assert page.evaluate(f"{VISIBLE_JOBS}.map(f => f.dataset.status)") == ["failed"]
    assert page.evaluate(
        "Array.from(document.querySelectorAll('tbody tr')).map(r => r.hidden)"
    ) == [
        True,
        False,
    ]  # a.png's row has no failure
    assert page.locator("#shown").inner_text() == "1 of 4 jobs shown"
    page.select_option("#status", "all")
    assert page.evaluate(f"{VISIBLE_JOBS}.length") == 4
    # Keyboard: focus the first job and press Enter; the detail shows the full-size output,
    # the loss curve from the record and its parameters.
    page.locator("figure.job").first.focus()
    page.keyboard.press("Enter")
    page.wait_for_function("() => document.getElementById('detail').open")
    page.wait_for_function("() => document.querySelector('img.full').naturalWidth > 0")
    assert page.locator("#detail svg.chart polyline").count() >= 2
    assert "iterations" in page.locator("#detail table.facts").last.inner_text()
    every = links(page) + seen.requests
    assert any(url.endswith(".json") for url in links(page))  # the record's link
    outside = [url for url in every if not url.startswith(prefix)]
    assert outside == [] and not seen.errors and not seen.dialogs


def test_the_page_served_from_s3_by_nst_gallery(browser, s3_runs, tmp_path):
    latest = s3_runs.runs[-1]
    log = (tmp_path / "serve.log").open("w")
    command = [sys.executable, "-m", "nst_cli", "gallery", latest, "--serve"]
    server = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        # Ctrl-C as from a terminal: a suite started in the background by a script inherits
        # SIGINT ignored, and Python then never turns SIGINT into KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in server.stdout], daemon=True).start()
    try:
        url = ""
        while not url.startswith("open:"):
            url = lines.get(timeout=60)
        url = url.split(None, 1)[1].strip()
        prefix = url.split("/_runs/")[0] + "/"
        assert prefix.startswith("http://127.0.0.1:")
        page, seen = open_page(browser, url)
        # The rerun's page covers the whole batch: the 3 done jobs skipped, with thumbnails.
        statuses = page.evaluate(f"{VISIBLE_JOBS}.map(f => f.dataset.status).sort()")
        assert statuses == ["failed", "skipped", "skipped", "skipped"]
        check_the_2x2_page(page, seen, prefix)
        page.close()
    finally:
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=20) == 0


def test_the_page_copied_to_local_disk_opens_from_file(browser, s3_runs, tmp_path):
    source = f"{s3_runs.root}/out"
    for uri in storage.list_prefix(source):  # as `aws s3 sync` would copy it
        storage.write_bytes(str(tmp_path / "out") + uri[len(source) :], storage.read_bytes(uri))
    first = tmp_path / "out" / "_runs" / storage.name(s3_runs.runs[0]) / "index.html"
    page, seen = open_page(browser, first.as_uri())
    statuses = page.evaluate(f"{VISIBLE_JOBS}.map(f => f.dataset.status).sort()")
    assert statuses == ["completed", "completed", "completed", "failed"]
    check_the_2x2_page(page, seen, (tmp_path / "out").as_uri() + "/")
    page.close()


def test_a_rerun_makes_no_thumbnail_again(s3_runs):
    first, rerun = s3_runs.written
    assert len(first) == len(set(first)) == 3 + 2 + 2  # outputs, contents, styles
    assert rerun == []
    report = storage.read_bytes(f"{s3_runs.runs[-1]}/report.md").decode()
    assert f"`{s3_runs.runs[-1]}/index.html`" in report
    assert f"nst gallery {s3_runs.runs[-1]} --serve" in report


def test_a_run_reads_no_output_back_for_its_pictures(s3_runs):
    """Thumbnails are made by the units from the images they wrote, and the contact sheet is
    drawn from them: neither the first run nor the rerun reads a full-size output back."""
    first, rerun = s3_runs.outputs_read
    assert first == Counter(), first
    assert rerun == Counter(), rerun


def test_nst_gallery_of_a_manifest_names_its_latest_run(s3_runs, capsys):
    from cli_runner import run_cli

    code, out, _ = run_cli(["gallery", s3_runs.manifest], capsys)
    assert code == 0
    assert f"gallery: {s3_runs.runs[-1]}/index.html" in out
    assert f"nst gallery {s3_runs.runs[-1]} --serve" in out


HOSTILE_STYLE = "<img src=x onerror=alert(1)>.jpg"
HOSTILE_CONTENT = "<img src=y onerror=window.__xss=1>.png"
QUOTED_CONTENT = "q\"uote & 'amp'.png"
HOSTILE_ERROR = '</script><script>window.__xss=2</script><!-- & "quoted"'


@pytest.mark.parametrize("policy", ["kept", "removed"])
def test_untrusted_names_and_errors_render_as_text(browser, tmp_path, policy):
    """Hostile file names and error messages show as text and run nothing: with the page's
    Content-Security-Policy, and without it (so escaping alone is what is tested)."""
    layout, summary = synthetic_run(
        str(tmp_path),
        [HOSTILE_CONTENT, QUOTED_CONTENT],
        [HOSTILE_STYLE, "s2.png"],
        failed=[(1, 0)],
        error=HOSTILE_ERROR,
    )
    page_path = Path(write_gallery(layout, summary))
    html = page_path.read_text()
    assert "Content-Security-Policy" in html
    if policy == "removed":
        html = "\n".join(
            line for line in html.splitlines() if "Content-Security-Policy" not in line
        )
        page_path.write_text(html)
    page, seen = open_page(browser, page_path.as_uri())
    assert page.evaluate("window.__xss") is None and seen.dialogs == [] and not seen.errors
    assert page.locator("img[src=x], img[src=y], script[src]").count() == 0
    headers = page.locator("thead th .name").all_inner_texts()
    assert headers == [HOSTILE_STYLE, "s2.png"]
    assert page.locator("tbody th .name").all_inner_texts() == [HOSTILE_CONTENT, QUOTED_CONTENT]
    assert HOSTILE_STYLE in page.locator("#style").inner_text()
    failed = page.locator("figure.job.failed")
    assert failed.locator(".error").inner_text() == HOSTILE_ERROR
    assert failed.get_attribute("aria-label") == f"{QUOTED_CONTENT} x {HOSTILE_STYLE}: failed"
    failed.click()  # the detail writes the same text through the script
    page.wait_for_function("() => document.getElementById('detail').open")
    assert page.locator("#detail-title").inner_text() == f"{QUOTED_CONTENT} x {HOSTILE_STYLE}"
    assert page.locator("#detail .error").inner_text() == HOSTILE_ERROR
    assert page.evaluate("window.__xss") is None and seen.dialogs == []
    assert all(url.startswith((tmp_path / "out").as_uri() + "/") for url in seen.requests)
    page.close()


@contextlib.contextmanager
def serving(root: str, page: str):
    """A GalleryServer on `root` in a thread; `request(method, path)` asks it, with the Host
    header http.client sends (127.0.0.1:PORT) unless `host` is given or `no_host` says none."""
    server = GalleryServer(root, page)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    port = server.server_address[1]

    def request(method: str, path: str, host: str | None = None, no_host: bool = False):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        if no_host:
            connection.putrequest(method, path, skip_host=True)
            connection.endheaders()
        else:
            connection.request(method, path, headers={"Host": host} if host is not None else {})
        response = connection.getresponse()
        body = response.read()
        connection.close()
        return response, body

    try:
        yield SimpleNamespace(request=request, root=root, port=port, server=server)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def served(tmp_path):
    """A GalleryServer on tmp_path/out, whose page links a.png and a symbolic link out of the
    folder, beside a secret it must never give."""
    out = tmp_path / "out"
    (out / "_runs" / "r1").mkdir(parents=True)
    (out / "_runs" / "r1" / "index.html").write_text(
        '<a href="../../a.png">a</a> <img src="../../link.txt">'
    )
    (out / "a.png").write_bytes(b"\x89PNG fake")
    (tmp_path / "secret.txt").write_text("secret")
    (out / "link.txt").symlink_to(tmp_path / "secret.txt")
    with serving(str(out), "_runs/r1/index.html") as server:
        yield server


@pytest.mark.parametrize(
    "path",
    [
        "/../secret.txt",
        "/_runs/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/_runs%2f..%2f..%2fsecret.txt",
        "/..%5csecret.txt",
        "/./a.png",
        "/link.txt",  # a symbolic link out of the folder
        "http://example.com/a.png",
    ],
)
def test_the_server_refuses_paths_outside_its_folder(served, path):
    # Its own Host header: http.client would send example.com's for the absolute form.
    response, body = served.request("GET", path, host=f"127.0.0.1:{served.port}")
    assert response.status == 403 and b"secret" not in body


def test_the_server_answers_get_and_head_only(served):
    response, body = served.request("GET", "/a.png")
    assert (response.status, body, response.getheader("Content-Type")) == (
        200,
        b"\x89PNG fake",
        "image/png",
    )
    response, body = served.request("HEAD", "/a.png")
    assert (response.status, body, response.getheader("Content-Length")) == (200, b"", "9")
    response, _ = served.request("GET", "/")
    assert (response.status, response.getheader("Location")) == (302, "/_runs/r1/index.html")
    assert served.request("GET", "/missing.png")[0].status == 404
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        response, _ = served.request(method, "/a.png")
        assert (response.status, response.getheader("Allow")) == (405, "GET, HEAD")
    assert (Path(served.root) / "a.png").read_bytes() == b"\x89PNG fake"


def test_the_server_listens_on_loopback_only(served):
    assert served.server.server_address[0] == "127.0.0.1"


@pytest.mark.parametrize(
    "host",
    [
        "attacker.example:{port}",  # DNS rebinding: the attacker's name, now at 127.0.0.1
        "attacker.example",
        "localhost.attacker.example:{port}",
        "localhost",  # the default port, not this one
        "127.0.0.1:1",
        "",
        None,  # no Host header at all
    ],
)
def test_a_request_naming_another_host_gets_no_content(served, host):
    for path in ("/a.png", "/", "/_runs/r1/index.html"):
        if host is None:
            response, body = served.request("GET", path, no_host=True)
        else:
            response, body = served.request("GET", path, host=host.format(port=served.port))
        assert response.status == 421, (host, path)
        assert response.getheader("Location") is None
        assert b"PNG fake" not in body and b"../../a.png" not in body
        assert f"http://localhost:{served.port}/".encode() in body  # says what it answers


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "LocalHost:{port}"])
def test_the_bound_address_and_localhost_are_answered(served, host):
    response, body = served.request("GET", "/a.png", host=host.format(port=served.port))
    assert (response.status, body) == (200, b"\x89PNG fake")


def test_the_server_gives_the_files_the_page_links_and_nothing_else(tmp_path):
    """Each file the page links (its run files, thumbnails, outputs and records) is served,
    with its bytes; the rest of the output folder is not, however it is named."""
    layout, summary = synthetic_run(
        str(tmp_path), ["a.png", "b c%.png"], ["s 1.png"], failed=[(1, 0)]
    )
    write_gallery(layout, summary)
    run = summary.run
    run_files = [layout.summary(run), layout.report(run), layout.contact_sheet(run)]
    for uri in [*run_files, layout.loss_plot(run)]:
        storage.write_bytes(uri, f"the run's {storage.name(uri)}".encode())
    done = [e for e in summary.jobs if e.status == "completed"]
    failed = [e for e in summary.jobs if e.status == "failed"]
    assert len(done) == len(failed) == 1
    linked = [layout.gallery(run), *run_files, layout.loss_plot(run), done[0].output]
    linked += [e.record for e in summary.jobs] + [str(p) for p in Path(layout.thumbs).iterdir()]
    assert len(linked) == 5 + 1 + 2 + 4  # page and run files, output, records, thumbnails
    unlinked = {
        "payroll.csv": b"name,salary\nalice,1",
        storage.name(failed[0].output): b"an output no record of the run vouches for",
        f"{RUNS}/{run}/notes.txt": b"beside the run files",
        f"{RUNS}/another-run/summary.json": b"another run's",
        f"{RUNS}/{THUMBS}/{'0' * 20}.8x8.jpg": b"a thumbnail this page does not show",
        "_claims/k.1.json": b"a claim",
    }
    for name, data in unlinked.items():
        storage.write_bytes(f"{layout.base}/{name}", data)
    with serving(layout.base, f"{RUNS}/{run}/index.html") as server:
        for uri in linked:
            response, body = server.request("GET", "/" + quote(uri[len(layout.base) + 1 :]))
            assert (response.status, body) == (200, Path(uri).read_bytes()), uri
        for name, data in unlinked.items():
            for method in ("GET", "HEAD"):
                response, body = server.request(method, "/" + quote(name))
                assert response.status == 404 and data not in body, name


def test_resolve_keeps_s3_keys_inside_the_prefix():
    assert resolve("s3://b/out", "/x%20y.png?v=1") == "s3://b/out/x y.png"
    assert resolve("s3://b/out", "/_runs/r/../../../other/key") is None


def test_nst_help_lists_gallery(capsys):
    from cli_runner import run_cli

    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0 and "  gallery " in out


def test_nst_gallery_explains_what_it_needs(tmp_path, capsys):
    from cli_runner import run_cli

    code, _, err = run_cli(["gallery", str(tmp_path)], capsys)
    assert code == 2 and err.count("\n") == 1
    assert f"{tmp_path}: no finished run here (no _runs/NAME/summary.json)" in err
    assert "output folder" in err and "run folder (OUTPUT/_runs/NAME)" in err and "manifest" in err
    code, _, err = run_cli(["gallery", str(tmp_path / "missing")], capsys)
    assert code == 2 and err.count("\n") == 1 and "missing: no such folder" in err
    code, _, err = run_cli(["gallery", str(tmp_path / "out" / "_runs" / "nope")], capsys)
    assert code == 2 and "no summary.json in this run folder" in err
    manifest = write_batch(str(tmp_path), MANIFEST)
    code, _, err = run_cli(["gallery", manifest], capsys)
    assert code == 2 and "no finished run of this batch" in err and "nst run" in err


def test_nst_gallery_writes_the_page_a_run_lacks(tmp_path, capsys):
    """Runs from before pages existed get one from their summary.json and records."""
    from cli_runner import run_cli

    layout, summary = synthetic_run(str(tmp_path), ["a.png"], ["s.png"])
    storage.write_bytes(layout.summary(summary.run), summary.to_json())
    code, out, _ = run_cli(["gallery", layout.run_folder(summary.run)], capsys)
    assert code == 0 and "wrote the page" in out
    page = Path(layout.gallery(summary.run))
    assert page.exists() and f"open:    {page.as_uri()}" in out
    assert len(os.listdir(RunLayout(str(tmp_path / "out")).thumbs)) == 3  # output, content, style


def test_nst_gallery_of_an_output_folder_opens_its_newest_finished_run(storage_root, capsys):
    """`nst gallery OUTPUT` (local or s3://, also OUTPUT/ and OUTPUT/_runs) names the newest
    run by the time in its name that wrote a summary; a newer run without one (unfinished,
    or killed) is passed over."""
    from cli_runner import run_cli

    newest = "alpha-20260102-000000-abcd"  # newer than zeta's, though it sorts first by name
    layout, summary = synthetic_run(storage_root, ["a.png"], ["s.png"], run=newest)
    storage.write_bytes(layout.summary(newest), summary.to_json())
    write_gallery(layout, summary)
    older = "zeta-20260101-000000-abcd"
    storage.write_bytes(layout.summary(older), summary.model_copy(update={"run": older}).to_json())
    storage.write_bytes(f"{layout.run_folder('alpha-20260103-000000-ffff')}/report.md", b"x")
    for target in (layout.base, layout.base + "/", layout.runs):
        code, out, err = run_cli(["gallery", target], capsys)
        assert code == 0, err
        assert f"gallery: {layout.gallery(newest)}\n" in out, target
    storage.write_bytes(f"{storage_root}/empty/notes.txt", b"no runs here")
    code, _, err = run_cli(["gallery", f"{storage_root}/empty"], capsys)
    assert code == 2 and err.count("\n") == 1 and "no finished run here" in err
