"""`nst devices`: the devices a batch may use and what `precision: auto` means on each."""

from __future__ import annotations

import typer

from nst_cli.options import settings


def devices(
    recalibrate: bool = typer.Option(
        False, "--recalibrate", help="Time fp32 and bf16 again instead of the remembered result."
    ),
) -> None:
    """List the devices a batch may use and what `precision: auto` means on each, and why."""
    import torch

    from nst_core.engine import calibration
    from nst_core.engine.devices import devices_for

    override = settings().precision
    for name in devices_for("auto"):
        device = torch.device(name)
        decision = calibration.decide(device, fresh=recalibrate, override=override)
        timings = (
            f"; fp32 {decision['fp32_s']:.3f} s, bf16 {decision['bf16_s']:.3f} s per "
            f"forward + input gradient at {decision['shape']}"
            if "fp32_s" in decision
            else ""
        )
        typer.echo(
            f"{name}: {calibration.device_model(device)}, torch {torch.__version__}"
            f"\n  auto = {decision['precision']} "
            f"({decision['source']}{timings})"
        )
    typer.echo(f"decisions kept in {calibration.cache_path()}")
