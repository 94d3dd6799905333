"""Bounded work: each cost a manifest can ask for is refused at validation with one line,
inputs are measured before they are read, jobs that cannot fit fail alone, duplicates are
counted, and credentials in endpoint URLs never reach a message."""

import socket
from pathlib import Path

import pytest
import yaml
from cli_runner import run_cli
from imagegen import TINY_MANIFEST, job_for, job_records, png_bytes, scene, stripes, write_batch

from nst_core.batch import memory_model, runner, storage
from nst_core.engine.params import StyleParams
from nst_core.settings import Settings


@pytest.fixture
def area(tmp_path) -> Path:
    (tmp_path / "photos").mkdir()
    (tmp_path / "paintings").mkdir()
    (tmp_path / "photos" / "a.png").write_bytes(png_bytes(scene(seed=1)))
    for n in range(20):
        (tmp_path / "paintings" / f"s{n}.png").write_bytes(png_bytes(stripes(seed=n)))
    return tmp_path


@pytest.fixture
def calls(monkeypatch) -> list[tuple[str, str]]:
    """(operation, URI) of every read, probe and listing, in order."""
    seen: list[tuple[str, str]] = []
    for op in ("read_bytes", "size_if_exists", "glob_sized", "list_prefix"):
        real = getattr(storage, op)

        def spy(uri, *args, _op=op, _real=real, **kwargs):
            seen.append((_op, str(uri)))
            return _real(uri, *args, **kwargs)

        monkeypatch.setattr(storage, op, spy)
    return seen


def manifest(area: Path, **doc) -> Path:
    body = {"version": 1, "output": "out", "contents": ["photos/a.png"]}
    body |= {"styles": ["paintings/s0.png"]} | doc
    path = area / "batch.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def refused(path: Path, capsys) -> list[str]:
    code, out, err = run_cli(["validate", path], capsys)
    assert code == 2 and out == "", (out, err)
    return [line.removeprefix(f"error: {path}: ") for line in err.strip().splitlines()]


@pytest.mark.parametrize(
    ("defaults", "expected"),
    [
        (
            {"scales": [16 * n for n in range(1, 10)], "size": 512},
            "defaults.scales: at most 8 scales (NST_MAX_SCALES); 9 given",
        ),
        (
            {"size": 8192, "style_scale": 4},
            "defaults: size 8192 x style_scale 4 makes the style image 32,768 px; the limit is "
            "8,192 (NST_MAX_STYLE_SIDE)",
        ),
        (
            {"iterations": 100_000, "scales": [256], "size": 512},
            "defaults: iterations 100,000 x 2 scales is 200,000 evaluations; the limit is "
            "100,000 per job (NST_MAX_EVALUATIONS)",
        ),
        (
            {"iterations": 20_000, "history_every": 1},
            "defaults: history_every 1 records 20,000 history rows; the limit is 10,000 "
            "(NST_MAX_HISTORY_ROWS): raise history_every",
        ),
    ],
)
def test_each_runaway_parameter_is_refused_with_its_line(area, capsys, defaults, expected):
    lines = refused(manifest(area, defaults=defaults), capsys)
    assert len(lines) == 1 and lines[0].startswith(expected), lines


def test_a_blend_of_too_many_styles_is_refused_before_any_is_looked_up(area, calls, capsys):
    blend = [f"paintings/s{n}.png" for n in range(17)]
    path = manifest(area, pairs=[{"content": "photos/a.png", "style": blend}])
    assert refused(path, capsys) == [
        "pairs[0].style: a blend of 17 styles; the limit is 16 (NST_MAX_BLEND_STYLES)"
    ]
    assert not [uri for _, uri in calls if "/paintings/s1" in uri]  # s1, s10-s16 untouched
    path = manifest(area, pairs=[{"content": "photos/a.png", "style": blend[:16]}])
    code, out, _ = run_cli(["validate", path], capsys)
    assert code == 0, out


def test_an_oversized_input_is_refused_from_its_size_without_being_read(
    area, calls, capsys, monkeypatch
):
    monkeypatch.setenv("NST_MAX_INPUT_MB", "1")
    big = area / "photos" / "big.png"
    big.write_bytes(png_bytes(scene(seed=1)) + b"\0" * 2**21)  # 2 MB and a bit
    expected = f"contents[0]: {big}: is 2.0 MB; an input may be at most 1 MB (NST_MAX_INPUT_MB)"
    assert refused(manifest(area, contents=["photos/big.png"]), capsys) == [expected]
    assert refused(manifest(area, contents=["photos/*.png"]), capsys) == [expected]
    assert ("size_if_exists", str(big)) in calls  # measured by a stat / HEAD ...
    assert ("read_bytes", str(big)) not in calls  # ... never read


def test_an_input_that_grew_after_validation_fails_its_job_without_being_read_whole(
    tmp_path, monkeypatch
):
    style = tmp_path / "s.png"
    style.write_bytes(png_bytes(stripes()))
    content = tmp_path / "a.png"
    content.write_bytes(png_bytes(scene()))
    job = job_for(
        str(content),
        ((str(style), 1.0),),
        StyleParams(size=40, iterations=2, device="cpu"),
        output_dir=str(tmp_path / "out"),
        fmt="png",
    )
    content.write_bytes(png_bytes(scene()) + b"\0" * 3 * 2**20)
    monkeypatch.setenv("NST_MAX_INPUT_MB", "2")  # as a worker's settings would say
    options = runner.UnitOptions(settings=Settings.from_env())
    (outcome,) = runner.run_unit([job], "cpu", options=options)
    assert outcome.status == "failed"
    assert outcome.error.endswith("is 3.0 MB; an input may be at most 2 MB (NST_MAX_INPUT_MB)")


def test_a_glob_walk_stops_at_its_entry_limit(area, capsys, monkeypatch):
    monkeypatch.setenv("NST_MAX_GLOB_ENTRIES", "10")
    assert refused(manifest(area, styles=["paintings/*.png"]), capsys) == [
        "styles[0]: lists more than 10 entries; narrow the glob (NST_MAX_GLOB_ENTRIES)"
    ]
    monkeypatch.setenv("NST_MAX_GLOB_ENTRIES", "ten")
    assert refused(manifest(area), capsys) == [
        "error: NST_MAX_GLOB_ENTRIES: input should be a valid integer, unable to parse string "
        "as an integer, got 'ten'"
    ]


def test_validate_counts_pairs_that_ask_for_the_same_job(area, capsys):
    pair = {"content": "photos/a.png", "style": "paintings/s0.png"}
    path = manifest(area, pairs=[pair, pair, {**pair, "params": {"iterations": 7}}])
    code, out, _ = run_cli(["validate", path], capsys)
    assert code == 0
    assert out.strip() == "OK: 4 pairs, 2 distinct jobs (1 contents x 1 styles + 3 pairs)"


def test_the_memory_estimate_counts_blends_and_style_scale():
    params = StyleParams(size=512)
    one = memory_model.estimate_bytes(512, 512, params)
    assert memory_model.estimate_bytes(
        512, 512, params, styles=3
    ) - one == 2 * memory_model.gram_bytes(params)
    assert memory_model.gram_bytes(params) == 4 * (64**2 + 128**2 + 256**2 + 512**2 + 512**2)
    scaled = StyleParams(size=512, style_scale=4)
    # A 2048 px style pass outweighs the 512 px optimisation.
    assert memory_model.estimate_bytes(512, 512, scaled) > 2 * one


def test_a_job_that_cannot_fit_fails_alone_before_any_optimisation(
    tmp_path, prefect_server, monkeypatch
):
    """Validation cannot know a worker's memory; the flow that plans on it can."""
    from flows.batch import stylize_batch

    monkeypatch.delenv("NST_MEMORY_BUDGET_GB", raising=False)  # 4 GB on the CPU
    optimised: list[str] = []
    real = runner.stylize_pairs

    def counted(pairs, **kwargs):
        optimised.extend(pair.content_name for pair in pairs)
        return real(pairs, **kwargs)

    monkeypatch.setattr(runner, "stylize_pairs", counted)
    doc = yaml.safe_load(TINY_MANIFEST)
    doc["pairs"] = [
        {
            "content": "photos/a.png",
            "style": "paintings/s1.png",
            "params": {"size": 2048, "tile": "off"},
        }
    ]
    uri = write_batch(str(tmp_path), yaml.safe_dump(doc))
    state = stylize_batch(uri, return_state=True)
    assert state.is_failed() and "1 of 5 jobs failed" in state.message
    assert len(optimised) == 4  # the big job never reached the engine
    (big,) = [r for r in job_records(str(tmp_path)).values() if r["params"]["size"] == 2048]
    assert big["status"] == "failed"
    assert big["error"].startswith("needs about 11.")
    assert big["error"].endswith(
        "GB even alone, over the memory budget of 4.00 GB (NST_MEMORY_BUDGET_GB); lower size "
        "or style_scale, or let it run in tiles (tile: auto)"
    )


def _closed_port() -> int:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _validate_against(endpoint: str, capsys, monkeypatch) -> tuple[int, str, str]:
    """`nst validate s3://bucket/m.yaml` with AWS_ENDPOINT_URL=endpoint, tried once."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("NST_S3_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("NST_S3_CONNECT_TIMEOUT", "1")
    storage.reset_clients()
    try:
        return run_cli(["validate", "s3://bucket/m.yaml"], capsys)
    finally:
        storage.reset_clients()


def test_credentials_in_an_endpoint_url_are_never_printed(capsys, monkeypatch):
    port = _closed_port()
    code, out, err = _validate_against(
        f"http://alice:hunter2@127.0.0.1:{port}/tenant/x", capsys, monkeypatch
    )
    assert code == 2 and "cannot reach the S3 endpoint" in err, err
    assert "hunter2" not in err + out and "alice" not in err + out
    assert "tenant" not in err  # the path, which may hold a secret too
    assert f'"http://127.0.0.1:{port}"' in err  # scheme, host and port only


def test_secrets_in_an_endpoint_query_or_path_are_never_printed(capsys, monkeypatch):
    port = _closed_port()
    code, out, err = _validate_against(
        f"http://alice:hunter2@127.0.0.1:{port}/p/SECRET1/?sig=SECRET2", capsys, monkeypatch
    )
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert f"AWS_ENDPOINT_URL (http://127.0.0.1:{port}) has a query" in lines[0]
    for secret in ("SECRET", "sig=", "alice", "hunter2", "/p/"):
        assert secret not in err + out, secret


@pytest.mark.parametrize(
    "endpoint",
    ["not a URL: SECRET", "ftp://alice:SECRET@127.0.0.1:1", "http://alice:SECRET@bad_host:1/"],
)
def test_an_unusable_endpoint_is_one_line_without_its_secrets(endpoint, capsys, monkeypatch):
    code, out, err = _validate_against(endpoint, capsys, monkeypatch)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "error: s3://bucket/m.yaml: AWS_ENDPOINT_URL" in err
    assert "SECRET" not in err + out and "alice" not in err + out and "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("see https://u:p@h/x and s3://b/k", "see https://h and s3://b/k"),
        ('URL: "http://a:b@127.0.0.1:1/p/k?sig=S"', 'URL: "http://127.0.0.1:1"'),
        ("`HTTPS://[::1]:9000/t#frag`", "`https://[::1]:9000`"),
        ("http://a:pass/word@h:1/k", "http://h:1"),  # a raw "/" in the password
        ("http://h:1/?next=u@SECRET", "http://***"),  # an @ past the query: host unclear
        ("ftp://u:p@h/x", "ftp://***@h/x"),
    ],
)
def test_redact_shows_an_http_url_as_scheme_host_and_port(text, shown):
    assert storage.redact(text) == shown
