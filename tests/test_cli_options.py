"""`nst stylize`'s options are StyleParams' fields: every field is an option, in the help with
its description and default, and a value given reaches the model through parse_params."""

import pytest
from cli_runner import run_cli
from test_cli import assert_one_line_error

from nst_core.engine.params import StyleParams

# A value other than the default for every field, as typed and as the model holds it; valid
# together (scales under size, one layer weight per style layer).
GIVEN = {
    "size": (["--size", "300"], 300),
    "iterations": (["--iterations", "7"], 7),
    "stop_tolerance": (["--stop-tolerance", "0.05"], 0.05),
    "stop_window": (["--stop-window", "5"], 5),
    "content_layers": (["--content-layers", "relu3_1"], ("relu3_1",)),
    "style_layers": (["--style-layers", "relu1_1,relu2_1"], ("relu1_1", "relu2_1")),
    "style_layer_weights": (["--style-layer-weights", "1,3"], (1.0, 3.0)),
    "content_weight": (["--content-weight", "2.5"], 2.5),
    "strength": (["--strength", "0.8"], 0.8),
    "style_weight": (["--style-weight", "100"], 100.0),
    "tv_weight": (["--tv-weight", "0.001"], 0.001),
    "loss": (["--loss", "gatys"], "gatys"),
    "optimizer": (["--optimizer", "adam"], "adam"),
    "lbfgs_history": (["--lbfgs-history", "7"], 7),
    "learning_rate": (["--learning-rate", "0.05"], 0.05),
    "init": (["--init", "noise"], "noise"),
    "seed": (["--seed", "42"], 42),
    "scales": (["--scales", "128,256"], (128, 256)),
    "preserve_color": (["--preserve-color"], True),
    "style_scale": (["--style-scale", "0.5"], 0.5),
    "weights": (["--weights", "torchvision"], "torchvision"),
    "pooling": (["--pooling", "avg"], "avg"),
    "precision": (["--precision", "bf16"], "bf16"),
    "device": (["--device", "cpu"], "cpu"),
    "history_every": (["--history-every", "3"], 3),
    "lbfgs_history_on": (["--lbfgs-history-on", "host"], "host"),
    "tile": (["--tile", "192"], 192),
}


@pytest.fixture
def captured(monkeypatch):
    """The StyleParams each `nst stylize` hands its job, with the job itself stubbed out."""
    from nst_cli import stylize_job

    seen: list[StyleParams] = []
    monkeypatch.setattr(stylize_job, "check_output", lambda out: None)
    monkeypatch.setattr(stylize_job, "one_job", lambda c, s, b, params, o: seen.append(params))
    monkeypatch.setattr(stylize_job, "fit_memory", lambda job, env: job)
    monkeypatch.setattr(stylize_job, "stylize_file", lambda job, env: "stub")
    return seen


def test_every_field_is_an_option_and_reaches_the_model(image_files, tmp_path, captured, capsys):
    assert set(GIVEN) == set(StyleParams.model_fields), "give every field a value above"
    content, style = image_files
    base = ["stylize", content, style, "-o", tmp_path / "o.png"]
    args = [arg for typed, _ in GIVEN.values() for arg in typed]
    code, _, err = run_cli([*base, *args], capsys)
    assert code == 0, err
    assert captured[-1] == StyleParams(**{field: value for field, (_, value) in GIVEN.items()})
    code, _, err = run_cli(base, capsys)  # none given: the model's own defaults, every one
    assert code == 0, err
    assert captured[-1] == StyleParams()


def test_help_lists_every_field_with_its_description_and_default(capsys):
    code, out, _ = run_cli(["stylize", "--help"], capsys)
    assert code == 0
    text = " ".join(out.split())  # the help wraps at the terminal's width
    for field, info in StyleParams.model_fields.items():
        option = "--" + field.replace("_", "-")
        assert f" {option} " in text, option
        if info.description:
            assert " ".join(info.description.split()) in text, option
        default = info.default
        if isinstance(default, tuple):
            assert f"[default: {','.join(default)}]" in text, option
        elif default is not None and not isinstance(default, bool):
            assert f"[default: {default}]" in text, option
    assert "--preserve-color / --no-preserve-color" in text


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--tile", "5"], ["--tile: a tile is 16 to 8192 pixels"]),
        (["--lbfgs-history", "0"], ["--lbfgs-history", "allowed: 1 to 200"]),
        (["--lbfgs-history-on", "gpu"], ["--lbfgs-history-on", "'auto', 'device' or 'host'"]),
        (["--history-every", "x"], ["--history-every", "valid integer"]),
    ],
)
def test_a_bad_value_of_a_generated_option_is_one_line(
    extra, expected, image_files, tmp_path, capsys
):
    content, style = image_files
    out = tmp_path / "o.png"
    code, _, err = run_cli(["stylize", content, style, "-o", out, *extra], capsys)
    assert_one_line_error(code, err, expected)
    assert not out.exists()


def test_lists_words_and_flags_parse_as_typed(image_files, tmp_path, captured, capsys):
    """Lists comma-separated (README's `--scales 256`), `''` for none, a field's words as they
    are (`auto`, `off`), and a flag's `--no-` form, which wins when last."""
    content, style = image_files
    base = ["stylize", content, style, "-o", tmp_path / "o.png"]
    for extra, expected in [
        (["--scales", "256", "--size", "512"], {"scales": (256,), "size": 512}),
        (["--scales", ""], {"scales": None}),
        (["--scales", "auto"], {"scales": "auto"}),
        (["--tile", "off"], {"tile": "off"}),
        (["--preserve-color", "--no-preserve-color"], {"preserve_color": False}),
    ]:
        code, _, err = run_cli([*base, *extra], capsys)
        assert code == 0, err
        assert captured[-1] == StyleParams(**expected), extra
