"""`precision: auto` decided by timing, once per device and torch version, and remembered."""

import json

import pytest
import torch

from nst_core.engine import calibration, devices

CPU = torch.device("cpu")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("NST_PRECISION", raising=False)
    monkeypatch.setattr(devices, "_AUTO", {})
    return tmp_path / "nst-batch" / "precision.json"


def timer(fp32: float, bf16: float, probe: tuple[float, float] | None = None):
    """Seconds per step at the representative shape, and at the probe's (default: the same)."""
    calls = []

    def time_it(device, precision, side):
        calls.append(precision)
        if side == calibration.PROBE_SIDE and probe is not None:
            return dict(zip(("fp32", "bf16"), probe, strict=True))[precision]
        return {"fp32": fp32, "bf16": bf16}[precision]

    time_it.calls = calls
    return time_it


def test_the_faster_precision_wins_and_is_remembered(cache):
    fast_bf16 = timer(fp32=0.568, bf16=0.361)  # the Zen 4 that CPU flags misjudged
    decision = calibration.decide(CPU, timer=fast_bf16)
    assert decision["precision"] == "bf16" and decision["bf16_s"] == 0.361
    assert fast_bf16.calls == ["fp32", "bf16"] * 2  # the probe, then the representative shape
    assert decision["shape"] == "256x256"
    remembered = json.loads(cache.read_text())
    assert remembered[calibration.device_identity(CPU)]["precision"] == "bf16"
    # Known now: no timing again, even with a timer that would say otherwise.
    slow_bf16 = timer(fp32=0.3, bf16=1.2)
    assert calibration.decide(CPU, timer=slow_bf16)["precision"] == "bf16"
    assert slow_bf16.calls == []
    # Asked to measure again, it does, and remembers the new answer.
    assert calibration.decide(CPU, timer=slow_bf16, fresh=True)["precision"] == "fp32"
    assert json.loads(cache.read_text())[calibration.device_identity(CPU)]["precision"] == "fp32"


def test_a_far_slower_bf16_is_settled_by_the_small_probe(cache):
    slow = timer(fp32=0.68, bf16=35.1, probe=(0.07, 2.2))  # this repo's 2-core EPYC
    decision = calibration.decide(CPU, timer=slow)
    assert decision["precision"] == "fp32" and decision["shape"] == "64x64"
    assert slow.calls == ["fp32", "bf16"]


def test_a_tie_keeps_fp32_and_another_torch_measures_again(cache, monkeypatch):
    assert calibration.decide(CPU, timer=timer(fp32=1.0, bf16=0.95))["precision"] == "fp32"
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    again = timer(fp32=1.0, bf16=0.5)
    assert calibration.decide(CPU, timer=again)["precision"] == "bf16" and again.calls


def test_the_override_wins_and_a_bad_one_is_one_line(cache, monkeypatch):
    from nst_core.errors import NstError
    from nst_core.settings import Settings

    monkeypatch.setenv("NST_PRECISION", "bf16")
    override = Settings.from_env().precision
    never = timer(fp32=0.1, bf16=9.9)
    decision = calibration.decide(CPU, timer=never, override=override)
    assert decision["precision"] == "bf16" and never.calls == []
    assert devices.resolve_precision("auto", CPU, override) == "bf16"
    monkeypatch.setenv("NST_PRECISION", "fp16")
    with pytest.raises(NstError, match="NST_PRECISION: input should be 'fp32' or 'bf16'"):
        Settings.from_env()


def test_auto_asks_the_calibration_once_per_process_and_explicit_settings_never(cache, monkeypatch):
    asked = []

    def decide(device):
        asked.append(device)
        return {"precision": "bf16"}

    monkeypatch.setattr(calibration, "decide", decide)
    assert devices.resolve_precision("auto", CPU) == "bf16"
    assert devices.resolve_precision("auto", CPU) == "bf16"
    assert devices.resolve_precision("fp32", CPU) == "fp32"
    assert asked == [CPU]


def test_an_unwritable_cache_costs_a_measurement_not_a_failure(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # a file where a folder should be
    monkeypatch.delenv("NST_PRECISION", raising=False)
    assert calibration.decide(CPU, timer=timer(fp32=1.0, bf16=2.0))["precision"] == "fp32"


def test_the_real_timer_measures_one_forward_and_input_gradient():
    seconds = calibration.time_step(CPU, "fp32", calibration.PROBE_SIDE, repeats=1)
    assert 0 < seconds < 60


def test_nst_devices_prints_the_decision_and_its_timings(cache, monkeypatch, capsys):
    from cli_runner import run_cli

    monkeypatch.setattr(calibration, "time_step", timer(fp32=0.5, bf16=0.25))
    code, out, _ = run_cli(["devices"], capsys)
    assert code == 0
    assert (
        out.startswith(f"cpu: {calibration.device_model(CPU)}") and "auto = bf16 (measured" in out
    )
    assert "fp32 0.500 s, bf16 0.250 s" in out and str(cache) in out
