"""The `nst stylize` command: outputs, records and one-line errors for bad input."""

import json
import os
import struct
import sys
import zlib

import pytest
from cli_runner import run_cli
from imagegen import png_bytes, scene

FAST = ["--size", "48", "--iterations", "8", "--device", "cpu", "--precision", "fp32"]


def test_stylize_writes_the_image_and_its_record(image_files, tmp_path, capsys):
    content, style = image_files
    out = tmp_path / "result.jpg"
    code, stdout, _ = run_cli(["stylize", content, style, "-o", out, *FAST, "--seed", "5"], capsys)
    assert code == 0
    assert f"wrote {out}" in stdout
    from PIL import Image

    assert Image.open(out).format == "JPEG" and Image.open(out).size == (48, 36)
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["status"] == "completed"
    assert record["params"]["size"] == 48 and record["params"]["seed"] == 5
    assert record["inputs"]["content"]["uri"] == str(content)
    assert len(record["inputs"]["content"]["sha256"]) == 64
    assert record["inputs"]["styles"][0]["weight"] == 1.0
    assert record["losses"]["final"]["style"] > 0
    assert record["losses"]["history"][-1]["evaluation"] == 8
    assert record["device"] == "cpu" and record["precision"] == "fp32"
    assert record["weights"] == "caffe"
    assert {"torch", "torchvision", "python"} <= set(record["versions"])
    assert record["timings"]["optimize_s"] > 0 and set(record["timings"]) == {
        "read_s",
        "optimize_s",
        "write_s",
    }


def test_the_stopping_rule_and_auto_scales_are_options(image_files, tmp_path, capsys):
    content, style = image_files
    out = tmp_path / "result.png"
    extra = ["--scales", "auto", "--stop-tolerance", "0", "--stop-window", "5"]
    code, _, err = run_cli(["stylize", content, style, "-o", out, *FAST, *extra], capsys)
    assert code == 0, err
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["params"]["scales"] == "auto"  # below 512 px: the size alone
    assert record["params"]["stop_tolerance"] == 0 and record["params"]["stop_window"] == 5
    assert record["evaluations"] == 8 == record["losses"]["history"][-1]["evaluation"]


def test_several_styles_blend_with_their_weights(image_files, tmp_path, capsys):
    content, style = image_files
    other = tmp_path / "other.png"
    other.write_bytes(png_bytes(scene(seed=4)))
    out = tmp_path / "blend.png"
    args = ["stylize", content, style, other, "-o", out, *FAST, "--style-weights", "0.7,0.3"]
    code, _, _ = run_cli(args, capsys)
    assert code == 0
    styles = json.loads(out.with_suffix(".json").read_text())["inputs"]["styles"]
    assert [s["weight"] for s in styles] == [0.7, 0.3]


def _huge_png() -> bytes:
    """A valid PNG header declaring 30000 x 30000 pixels, far over Pillow's bomb limit."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


BAD_CONTENT = {
    "not an image": (b"just some text, not pixels", "not an image"),
    "empty file": (b"", "empty file"),
    "truncated": (png_bytes(scene(96, 96))[:300], "truncated or corrupt"),
    "decompression bomb": (_huge_png(), "decompression-bomb limit"),
    "too small": (png_bytes(scene(400, 6)), "too small for layer relu5_1"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONTENT))
def test_bad_content_image_is_one_clear_line(case, image_files, tmp_path, capsys):
    _, style = image_files
    data, expected = BAD_CONTENT[case]
    content = tmp_path / "photo.jpg"
    content.write_bytes(data)
    out = tmp_path / "out.png"
    code, _, err = run_cli(["stylize", content, style, "-o", out, *FAST], capsys)
    assert_one_line_error(code, err, [str(content), expected])
    assert not out.exists() and not out.with_suffix(".json").exists()


BAD_OPTIONS = {
    "unknown layer": (["--style-layers", "relu1_1,relu9_9"], ["--style-layers", "relu9_9"]),
    "negative weight": (["--style-weight", "-5"], ["--style-weight", "greater than or equal"]),
    "non-numeric weight": (["--content-weight", "abc"], ["--content-weight", "'abc'"]),
    "bad blend": (["--style-weights", "1,2"], ["--style-weights", "2 weights for 1 style"]),
    "infinite blend": (["--style-weights", "inf"], ["--style-weights", "from 0 to 1e+09"]),
    "nan blend": (["--style-weights", "nan"], ["--style-weights", "not all zero; got 'nan'"]),
    "infinite weight": (["--content-weight", "1e999"], ["--content-weight", "finite"]),
    "bad optimizer": (["--optimizer", "sgd"], ["--optimizer", "'lbfgs' or 'adam'"]),
    "bad device": (["--device", "tpu"], ["--device", "cuda:N"]),
    "layer weights count": (["--style-layer-weights", "1,2"], ["style_layer_weights has 2"]),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_bad_option_is_one_clear_line(case, image_files, tmp_path, capsys):
    content, style = image_files
    extra, expected = BAD_OPTIONS[case]
    out = tmp_path / "out.png"
    code, _, err = run_cli(["stylize", content, style, "-o", out, *FAST, *extra], capsys)
    assert_one_line_error(code, err, expected)
    assert not out.exists()


def test_missing_input_file_is_named(image_files, tmp_path, capsys):
    _, style = image_files
    missing = tmp_path / "nope.jpg"
    code, _, err = run_cli(["stylize", missing, style, "-o", tmp_path / "o.png"], capsys)
    assert_one_line_error(code, err, [str(missing), "no such content file"])


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("missing-folder/out.png", "does not exist"),
        ("out.gif", "unsupported output format .gif"),
        ("a-folder", "is a folder"),
    ],
)
def test_unwritable_output_fails_before_any_work(name, expected, image_files, tmp_path, capsys):
    content, style = image_files
    (tmp_path / "a-folder.png").mkdir()
    out = tmp_path / (name if name != "a-folder" else "a-folder.png")
    code, _, err = run_cli(["stylize", content, style, "-o", out, *FAST], capsys)
    assert_one_line_error(code, err, [expected])
    assert not (tmp_path / "missing-folder").exists()


def test_existing_output_survives_a_failed_run(image_files, tmp_path, capsys):
    content, style = image_files
    out = tmp_path / "keep.png"
    out.write_bytes(b"earlier result")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"garbage")
    code, _, _ = run_cli(["stylize", broken, style, "-o", out, *FAST], capsys)
    assert code == 2
    assert out.read_bytes() == b"earlier result"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_console_script_runs_end_to_end(image_files, tmp_path, spawn):
    content, style = image_files
    out = tmp_path / "cli.png"
    nst = spawn.run(
        [sys.executable, "-m", "nst_cli", "stylize", content, style, "-o", out, *FAST],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert nst.returncode == 0, nst.stderr
    assert out.exists() and out.with_suffix(".json").exists()
    assert "Traceback" not in nst.stderr


def assert_one_line_error(code, err, expected_parts):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for part in expected_parts:
        assert part in lines[0]
    assert "Traceback" not in err


def test_nst_run_gives_the_embedded_server_its_startup_time(tmp_path, spawn):
    """Prefect reads its settings when it is first imported: `nst run` (nst_cli/app.py) must set
    the embedded server's startup timeout (120 s, not Prefect's 20 s, which a busy 2-core
    machine overran) before anything imports Prefect, and make that server its own (one that
    ends with it: flows/embedded.py). The flow is a stand-in that reports the settings it runs
    under and whether the embedded server was installed."""
    from imagegen import TINY_MANIFEST, write_batch

    uri = write_batch(str(tmp_path), TINY_MANIFEST)
    script = f"""
import sys, types
def stand_in(**kwargs):
    from prefect.settings import get_current_settings
    settings = get_current_settings()
    print("timeout", settings.server.ephemeral.startup_timeout_seconds)
    print("analytics", settings.server.analytics_enabled)
    from flows import embedded
    print("embedded", embedded._installed is not None)
    raise SystemExit(0)
sys.modules["flows.batch"] = types.SimpleNamespace(stylize_batch=stand_in)
from nst_cli import app as cli
sys.argv = ["nst", "run", {uri!r}]
cli.main()
"""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PREFECT_SERVER_") and k != "PREFECT_API_URL"
    }
    done = spawn.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [
        "timeout",
        "120",
        "analytics",
        "False",
        "embedded",
        "True",
    ], done.stdout


def test_help_lists_every_command(capsys):
    code, out, _ = run_cli(["--help"], capsys)
    assert code == 0
    for command in ("stylize", "validate", "plan", "schema", "devices", "run", "demo"):
        assert f"  {command} " in out, out


SHALLOW = ["--content-layers", "relu3_1", "--style-layers", "relu1_1,relu2_1,relu3_1"]


def test_stylize_runs_in_tiles_what_the_memory_budget_cannot_hold_whole(
    image_files, tmp_path, capsys, monkeypatch
):
    from nst_core.batch import memory_model
    from nst_core.engine.params import StyleParams

    content, style = image_files
    params = StyleParams(
        size=96, content_layers=("relu3_1",), style_layers=("relu1_1", "relu2_1", "relu3_1")
    )
    whole, tiled = (
        memory_model.estimate_bytes(96, 72, params),
        memory_model.tiled_bytes(96, 72, params, 32),
    )
    assert tiled < whole
    budget = (tiled + whole) / 2
    monkeypatch.setenv("NST_MEMORY_BUDGET_GB", str(budget / 2**30))
    out = tmp_path / "big.png"
    args = ["stylize", content, style, "-o", out, "--size", "96", "--iterations", "4"]
    code, _, err = run_cli([*args, "--device", "cpu", "--precision", "fp32", *SHALLOW], capsys)
    assert code == 0, err
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["params"]["tile"] == "auto"  # as asked; the planner's choice apart:
    tile = record["execution"]["tile"]
    assert isinstance(tile, int) and memory_model.tiled_bytes(96, 72, params, tile) <= budget
    assert record["tiling"][0]["tile"] == tile and record["tiling"][0]["tiles"] > 1


def test_stylize_refuses_before_any_work_what_fits_not_even_in_tiles(
    image_files, tmp_path, capsys, monkeypatch
):
    content, style = image_files
    monkeypatch.setenv("NST_MEMORY_BUDGET_GB", "0.01")
    out = tmp_path / "poster.png"
    code, _, err = run_cli(["stylize", content, style, "-o", out, *FAST], capsys)
    assert_one_line_error(code, err, [str(content), "even alone and in tiles", "0.01 GB"])
    assert not out.exists() and not out.with_suffix(".json").exists()


@pytest.mark.parametrize("value", ["inf", "nan", "1e999"])
def test_a_setting_must_be_a_finite_number(value, monkeypatch):
    from nst_core.errors import NstError
    from nst_core.settings import Settings

    monkeypatch.setenv("NST_MAX_INPUT_MB", value)
    with pytest.raises(NstError, match="NST_MAX_INPUT_MB"):
        Settings.from_env()
