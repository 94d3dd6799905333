"""The GPU benchmark: batched engine against the one-at-a-time fp32 baseline at 512x512.

One process, one JSON file (argument 1, else $OUT/gpu.json, else bench/results/gpu.json),
rewritten after every section so a run cut short still leaves what it measured. Sections,
most important first; each is skipped once NST_GPU_BENCH_BUDGET_S would not hold it:

- describe, ceilings: the card, and its measured bf16 matrix rate and copy bandwidth;
- grams_only: the Gram's three paths (fp32, TF32, bf16 operands): time and float64 error;
- baseline: tutorial-style fp32 L-BFGS, 300 evaluations per image, 4 runs with cuDNN at its
  defaults (as the tutorial leaves it) and 4 with cudnn.benchmark; every final loss kept;
- engine: its defaults on a batch of 16 pairs, median of 3; images per hour against the
  baseline's, and FLOP utilisation: image-iterations/s x 379 GFLOP (forward + input
  gradient through relu5_1 at 512x512, scaled by pixels) against the bf16 dense peak;
- quality: every output scored by the fixed fp32 evaluator (bench/common.py);
- convergence: evaluations to the baseline's quality in bf16 and in fp32;
- levers: fp32, the Gram's paths, cudnn.benchmark on, torch.compile of the engine's network;
- memory_model: the planner's predictions against torch's measured peaks, 128-1024 px x 1-16;
- look: the engine at its production defaults (balanced loss, strength, stopping rule) on a
  batch of 16, images per hour and the look metric (bench/look.py) against the baseline's
  outputs, at its defaults, at equal evaluations (300) and towards equal time;
- profile: a torch.profiler table of where an evaluation's time goes: every op by name and
  input shape (so each VGG layer's convolution, forward and input gradient, is its own
  row), and totals for convolutions, their gradients, ReLU/pooling, casts, Grams, losses
  and L-BFGS;
- tiled_large: a 2048 px job, and 4096 px when the time allows, planned in tiles under an
  8 GB budget: tiles, seconds per evaluation, peak memory against the planner's prediction;
- cuda_graphs: the network's forward and backward captured as CUDA graphs for the unit's
  fixed shape (CUDA only);
- batch_sweep, network_only, torch_compile: batches 1-128; the bare network in each
  precision and layout (bf16 + channels_last is the engine's whole step), and compiled;
- compile_unit_thread: the engine with its network under torch.compile, compiled and run
  from a worker thread as a flow's unit runs, once per shape per process behind a lock.

NST_GPU_BENCH_SECTIONS=a,b runs only those sections (a rerun inside one lease);
NST_BENCH_IMAGES=DIR takes the sample photos from DIR. `--dry-run` does all of it at toy
sizes on any device, to check the script end to end, and names the CUDA-only sections it
skipped; `--no-compile` skips torch.compile.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import torch

from bench.baseline import EVALUATIONS, TUTORIAL_SETTINGS, run_baseline
from bench.common import Evaluator, inputs, planning_job, tensors
from bench.look import LookMetric
from bench.memory import GPU_GRID, one
from nst_core.batch.memory_model import estimate_bytes
from nst_core.batch.units import job_bytes, split_unfit, unfit_reason
from nst_core.engine import images
from nst_core.engine.loop import network_for, network_layers, stylize_pairs
from nst_core.engine.losses import gram
from nst_core.engine.params import StyleParams
from nst_core.engine.steppers import LBFGSSteps
from nst_core.engine.targets import Pair
from nst_core.engine.trace import HistoryRow
from nst_core.engine.vgg import load_vgg

GFLOP_PER_IMAGE_ITERATION_512 = 379.0
# The poster section's budget: a consumer card's memory, so 2048 and 4096 px run tiled.
TILED_BUDGET_GB = 8.0
TILED_ITERATIONS = 10
# Dense bf16 tensor-core peaks, TFLOP/s (vendor data sheets; sparsity excluded).
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def gflop_per_image_iteration(width: int, height: int) -> float:
    """Convolution work scales with pixels; 379 GFLOP is the 512x512 figure."""
    return GFLOP_PER_IMAGE_ITERATION_512 * width * height / 512**2


def _category(op: str) -> str:
    """A profiled op's share of an evaluation, by what it does."""
    name = op.lower()
    if name.startswith("nst::"):
        return "labelled ranges (counted in their ops)"
    if "convolution_backward" in name or "convolutionbackward" in name:
        return "convolution input gradient"
    if "conv" in name:
        return "convolution forward"
    if any(k in name for k in ("relu", "threshold", "pool")):
        return "relu / pooling"
    if any(k in name for k in ("_to_copy", "aten::to", "copy_", "contiguous", "clone")):
        return "casts and layout copies"
    if any(k in name for k in ("bmm", "mm", "matmul", "gram")):
        return "grams (matrix products)"
    if any(k in name for k in ("mse", "sub", "pow", "square", "mean", "sum", "mul", "div")):
        return "losses and vector arithmetic (incl. L-BFGS)"
    return "other"


def gram_fp32_path(features: torch.Tensor) -> torch.Tensor:
    """The Gram before the bf16 path: on an fp32 copy of the features, one fp32 GEMM."""
    return gram(features.float())


@contextlib.contextmanager
def flags(cudnn_benchmark: bool | None = None, matmul_tf32: bool | None = None):
    """Set cuDNN autotuning and TF32 matmuls for a block, then put them back."""
    saved = torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32
    if cudnn_benchmark is not None:
        torch.backends.cudnn.benchmark = cudnn_benchmark
    if matmul_tf32 is not None:
        torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32 = saved


class Bench:
    def __init__(self, out: Path, dry: bool, budget_s: float, with_compile: bool):
        self.out, self.dry, self.budget_s, self.with_compile = out, dry, budget_s, with_compile
        self.started = time.perf_counter()
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.cuda = self.device == "cuda"
        self.name = torch.cuda.get_device_name() if self.cuda else "cpu"
        # Toy sizes for a dry run; the real ones are the issue's: 512 px, 16 pairs, 300 evals.
        self.size, self.batch = (32, 2) if dry else (512, 16)
        self.baseline_evals = 4 if dry else EVALUATIONS
        self.engine_iterations = 4 if dry else StyleParams().iterations
        self.lever_iterations = 3 if dry else 40
        # The sample photos where they are (NST_BENCH_IMAGES), else drawn images; square,
        # so the output is 512x512, the size the FLOP figure is for.
        content, self.style, described = inputs()
        width, height = content.size
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        self.content = content.crop((left, top, left + side, top + side))
        self.report: dict = {
            "device": self.name,
            "dry_run": dry,
            "size": self.size,
            "inputs": described,
        }
        self.baseline_images: list[torch.Tensor] = []
        self.baseline_final_loss: float | None = None
        self.engine_history: list[HistoryRow] = []
        self.engine_image = None

    # -- plumbing ---------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def section(self, name: str, need_s: float, fn) -> None:
        left = self.budget_s - self.elapsed()
        if left < need_s:
            self.report[name] = {"skipped": f"time budget: {left:.0f} s left, needs ~{need_s} s"}
        else:
            began = time.perf_counter()
            try:
                self.report[name] = fn()
            except Exception as exc:  # one failed section must not cost the others
                traceback.print_exc()
                self.report[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            if isinstance(self.report[name], dict):
                self.report[name]["section_s"] = round(time.perf_counter() - began, 1)
        if self.cuda:
            torch.cuda.empty_cache()
        self.save()
        print(f"[{self.elapsed():6.1f} s] {name}: {json.dumps(self.report[name])}", flush=True)

    def save(self) -> None:
        self.report["elapsed_s"] = round(self.elapsed(), 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.report, indent=2))

    def timed(self, fn, repeats: int) -> tuple[list[float], list]:
        """Seconds of each of `repeats` calls, device work included, and what each returned."""
        times, values = [], []
        for _ in range(repeats):
            self.sync()
            began = time.perf_counter()
            values.append(fn())
            self.sync()
            times.append(time.perf_counter() - began)
        return times, values

    def reset_peak(self) -> int:
        if not self.cuda:
            return 0
        self.sync()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()

    def peak_mb(self, base: int) -> float | None:
        return (torch.cuda.max_memory_allocated() - base) / 2**20 if self.cuda else None

    # -- sections ---------------------------------------------------------------------------
    def describe(self) -> dict:
        info = {
            "torch": torch.__version__,
            "cudnn": torch.backends.cudnn.version() if self.cuda else None,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        }
        if self.cuda:
            props = torch.cuda.get_device_properties(0)
            info |= {
                "multiprocessors": props.multi_processor_count,
                "memory_gb": round(props.total_memory / 2**30, 1),
                "capability": f"{props.major}.{props.minor}",
            }
        return info

    def ceilings(self) -> dict:
        n = 512 if self.dry else 8192
        a = torch.randn(n, n, device=self.device, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=self.device, dtype=torch.bfloat16)
        self.timed(lambda: a @ b, 3)
        times, _ = self.timed(lambda: a @ b, 10)
        copy_src = torch.randn(2**28 if not self.dry else 2**20, device=self.device)
        copy_dst = torch.empty_like(copy_src)
        self.timed(lambda: copy_dst.copy_(copy_src), 3)
        copy_times, _ = self.timed(lambda: copy_dst.copy_(copy_src), 10)
        moved = 2 * copy_src.numel() * copy_src.element_size()
        return {
            "bf16_matmul_tflops": 2 * n**3 / statistics.median(times) / 1e12,
            "copy_tb_per_s": moved / statistics.median(copy_times) / 1e12,
        }

    def baseline(self) -> dict:
        params = StyleParams(size=self.size, device=self.device)
        content_t, style_t = (
            t.to(self.device) for t in tensors(self.content, self.style, self.size)
        )
        out = {"evaluations": self.baseline_evals}
        self.baseline_images, finals = [], []
        for label, autotune in (("cudnn_default", False), ("cudnn_benchmark", True)):
            with flags(cudnn_benchmark=autotune):
                run_baseline(content_t, style_t, params, 20 if not self.dry else 2)  # warm-up
                times, runs = self.timed(
                    lambda: run_baseline(content_t, style_t, params, self.baseline_evals), 4
                )
            # Its final losses differ run to run (no line search, TF32 convolutions), so
            # each run's output is kept and scored.
            for image, trace in runs:
                self.baseline_images.append(images.to_tensor(images.to_image(image)))
                finals.append(trace[-1][2])
            out[label] = {
                "s_per_image": statistics.median(times),
                "s_all": times,
                "images_per_hour": 3600 / statistics.median(times),
            }
        self.baseline_final_loss = statistics.median(finals)
        out["final_trace_losses"] = finals
        return out

    def engine_rate(self, batch: int, iterations: int, *, parts=None, **overrides) -> dict:
        return self.engine_run(batch, iterations, parts=parts, **overrides)[0]

    def engine_run(
        self,
        batch: int,
        iterations: int,
        *,
        repeats: int = 1,
        parts=None,
        settings: dict | None = None,
        tutorial: bool = True,
        **overrides,
    ) -> tuple[dict, list]:
        """Throughput of one batch of `batch` identical pairs, after a warm-up at its shapes,
        and the last repeat's results. `parts` (network, gram_of) go to the engine as is.
        It runs the tutorial's objective, so losses compare with the baseline's, unless
        `tutorial` is False (the production defaults)."""
        # Throughput runs take every evaluation: no stopping rule unless a caller asks.
        fixed = {**TUTORIAL_SETTINGS, "stop_tolerance": 0.0} if tutorial else {}
        settings = {**fixed, **(settings or {}), **overrides}
        params = StyleParams(size=self.size, device=self.device, iterations=iterations, **settings)

        def run(params=params):
            pairs = [Pair(self.content, [self.style], params)] * batch
            return stylize_pairs(pairs, **(parts or {}))

        run(params.model_copy(update={"iterations": 2}))  # cuDNN autotuning, allocator warm-up
        base = self.reset_peak()
        times, runs = self.timed(run, repeats)
        results = runs[-1]
        seconds = statistics.median(times)
        width, height = results[0].image.size
        rate = sum(r.evaluations for r in results) / seconds  # the evaluations run
        resolved = params.model_copy(update={"precision": results[0].precision})
        row = {
            "batch": batch,
            "iterations": iterations,
            "precision": results[0].precision,
            "s": seconds,
            "s_all": times,
            "images_per_hour": 3600 * batch / seconds,
            "image_iterations_per_s": rate,
            "tflops": rate * gflop_per_image_iteration(width, height) / 1000,
            "peak_mb": self.peak_mb(base),
            "predicted_mb": estimate_bytes(width, height, resolved, pairs=batch) / 2**20,
            "final_total_pair0": results[0].final.total,
        }
        return row, results

    def engine(self) -> dict:
        row, results = self.engine_run(self.batch, self.engine_iterations, repeats=3)
        self.engine_image = images.to_tensor(results[0].image)
        self.engine_history = results[0].history
        peak = peak_tflops(self.name)
        measured = self.report.get("ceilings", {}).get("bf16_matmul_tflops")
        row["flop_utilisation_datasheet"] = row["tflops"] / peak if peak else None
        row["flop_utilisation_measured_peak"] = row["tflops"] / measured if measured else None
        base = self.report.get("baseline", {})
        for label in ("cudnn_default", "cudnn_benchmark"):
            if label in base:
                row[f"speedup_vs_baseline_{label}"] = (
                    row["images_per_hour"] / base[label]["images_per_hour"]
                )
        return row

    def quality(self) -> dict:
        if not self.baseline_images or self.engine_image is None:
            return {"skipped": "needs both the baseline and the engine sections"}
        params = StyleParams(size=self.size, device="cpu", precision="fp32", **TUTORIAL_SETTINGS)
        evaluate = Evaluator(self.content, self.style, params)
        content_t, _ = tensors(self.content, self.style, self.size)
        look = LookMetric(self.content, self.style, self.size)
        baseline = [evaluate(image) for image in self.baseline_images]
        engine = evaluate(self.engine_image)
        # The engine's own trace (every history_every evaluations) against the baseline's
        # median final loss: how many of its evaluations the engine needed for that quality.
        reached = [
            (row.evaluation, row.seconds)
            for row in self.engine_history
            if row.total <= self.baseline_final_loss
        ]
        return {
            "evaluator": "fp32 on the CPU, 8-bit outputs, content+style at the output size",
            "baseline_looks": [asdict(look(images.to_image(i[0]))) for i in self.baseline_images],
            "engine_look": asdict(look(images.to_image(self.engine_image[0]))),
            "content_image_loss": evaluate(content_t),
            "baseline_losses": baseline,
            "baseline_median_loss": statistics.median(baseline),
            "engine_loss": engine,
            "baseline_runs_the_engine_beats": sum(engine < b for b in baseline),
            "engine_evaluations_to_baseline_median_trace_loss": reached[0][0] if reached else None,
            "engine_seconds_to_it_batch": reached[0][1] if reached else None,
        }

    def memory_model(self) -> dict:
        grid = [(32, 1), (32, 2)] if self.dry else GPU_GRID
        fp32 = [(32, 2)] if self.dry else [(256, 4), (512, 4), (1024, 1)]
        rows = [one(s, b, self.device, precision="auto") for s, b in grid]
        rows += [one(s, b, self.device, precision="fp32") for s, b in fp32]
        return {"rows": rows}

    def levers(self) -> dict:
        n, its = self.batch, self.lever_iterations
        out = {"default": self.engine_rate(n, its)}
        fp32_grams = {"gram_of": gram_fp32_path}
        out["fp32_grams"] = self.engine_rate(n, its, parts=fp32_grams)
        with flags(matmul_tf32=True):
            out["tf32_grams"] = self.engine_rate(n, its, parts=fp32_grams)
        out["fp32"] = self.engine_rate(n, its, precision="fp32")
        with flags(cudnn_benchmark=True):
            out["cudnn_benchmark_on"] = self.engine_rate(n, its)
        self.report["levers"] = out  # kept if the compile below takes the rest of the time
        self.save()
        if self.with_compile and self.budget_s - self.elapsed() > 100:
            out["torch_compile"] = self.compiled_engine(n, its)
        return out

    def compiled_engine(self, batch: int, iterations: int) -> dict:
        """The engine with its network under torch.compile; the warm-up holds the compiles."""
        params = StyleParams(size=self.size, device=self.device)
        network = torch.compile(network_for(params, self.device))
        began = time.perf_counter()
        row = self.engine_rate(batch, iterations, parts={"network": network})
        return row | {"wall_with_compile_s": time.perf_counter() - began}

    def convergence(self) -> dict:
        """Evaluations each precision needs to reach the baseline's final loss (300 evals)."""
        if self.baseline_final_loss is None:
            return {"skipped": "needs the baseline section"}
        batch, its = (2, 4) if self.dry else (4, EVALUATIONS)
        params = StyleParams(size=self.size, device="cpu", precision="fp32", **TUTORIAL_SETTINGS)
        evaluate = Evaluator(self.content, self.style, params)
        out = {"batch": batch, "iterations": its, "baseline_final_loss": self.baseline_final_loss}
        for precision in ("bf16", "fp32"):
            row, results = self.engine_run(batch, its, precision=precision)
            history = results[0].history
            reached = [r for r in history if r.total <= self.baseline_final_loss]
            row["evaluations_to_baseline_loss"] = reached[0].evaluation if reached else None
            row["loss_at"] = {r.evaluation: r.total for r in history[9::10]}
            row["evaluator_loss"] = evaluate(images.to_tensor(results[0].image))
            out[precision] = row
        return out

    def tiled_large(self) -> dict:
        """Posters: a 2048 px job, then 4096 px while the time budget holds, planned by the
        flow's planner under TILED_BUDGET_GB (a consumer card's memory, so they run tiled),
        TILED_ITERATIONS evaluations each: tiling, seconds per evaluation, measured peak
        against the planner's prediction. A dry run plans toy sizes under a toy budget."""
        # 192 px is the least that a toy budget makes tile (in 32 px tiles, halo 64).
        sizes = (192,) if self.dry else (2048, 4096)
        budget = int((0.155 if self.dry else TILED_BUDGET_GB) * 2**30)
        out = {"budget_gb": budget / 2**30}
        for size in sizes:
            took = out.get(str(sizes[0]), {}).get("s")
            if took is not None and self.elapsed() + 5 * took > self.budget_s:
                out[str(size)] = {"skipped": f"time budget: {size} px needs ~{5 * took:.0f} s"}
                continue
            out[str(size)] = self._tiled_job(size, budget)
        return out

    def _tiled_job(self, size: int, budget: int) -> dict:
        params = StyleParams(
            size=size,
            device=self.device,
            iterations=2 if self.dry else TILED_ITERATIONS,
            stop_tolerance=0,
            precision="bf16" if self.cuda else "fp32",
        )
        width, height = images.fit_size(*self.content.size, size)
        job = planning_job(params, width, height)
        fitting, unfit = split_unfit([job], budget, host_history=self.cuda)
        if unfit:
            return {"skipped": unfit_reason(job, unfit[0][1], budget)}
        execution = fitting[0].execution.on(self.device)
        pair = Pair(self.content, [self.style], params)
        warm_up = Pair(self.content, [self.style], params.model_copy(update={"iterations": 1}))
        stylize_pairs([warm_up], execution=execution)
        base = self.reset_peak()
        times, (results,) = self.timed(lambda: stylize_pairs([pair], execution=execution), 1)
        return {
            "output": [width, height],
            "tiling": [s.model_dump(exclude_unset=True) for s in results[0].tiling],
            "lbfgs_history_on": execution.history_on,
            "evaluations": results[0].evaluations,
            "s": times[0],
            "s_per_evaluation": times[0] / results[0].evaluations,
            "peak_mb": self.peak_mb(base),
            "predicted_mb": job_bytes(fitting[0]) / 2**20,
            "untiled_predicted_mb": estimate_bytes(width, height, params) / 2**20,
        }

    def batch_sweep(self) -> dict:
        sizes = (1, 2) if self.dry else (1, 4, 16, 32, 64, 128)
        return {f"batch_{b}": self.engine_rate(b, self.lever_iterations) for b in sizes}

    def _network(self, batch: int, *, bf16: bool, nhwc: bool, compiled: bool = False):
        """(VGG forward + input gradient through relu5_1, its input) as the engine runs it."""
        params = StyleParams()
        vgg = network_for(params, self.device)
        fmt = torch.channels_last if nhwc else torch.contiguous_format
        vgg = vgg.to(memory_format=fmt)
        forward = torch.compile(vgg) if compiled else vgg
        x = torch.rand(batch, 3, self.size, self.size, device=self.device)
        x = x.contiguous(memory_format=fmt).requires_grad_(True)

        def step():
            with torch.autocast(self.device, dtype=torch.bfloat16, enabled=bf16):
                feats = forward(x)
            sum(f.float().square().mean() for f in feats.values()).backward()
            x.grad = None

        return step

    def _rate(self, step, batch: int, warm: int = 3, repeats: int = 10) -> dict:
        if self.dry:  # the code path, not a figure
            warm, repeats = 1, 1
        self.timed(step, warm)
        times, _ = self.timed(step, repeats)
        seconds = statistics.median(times)
        tflops = batch * gflop_per_image_iteration(self.size, self.size) / seconds / 1000
        return {"ms": seconds * 1000, "tflops": tflops}

    def network_only(self) -> dict:
        out = {}
        with flags(cudnn_benchmark=True):
            for label, bf16, nhwc in (
                ("bf16_nhwc", True, True),
                ("bf16_nchw", True, False),
                ("fp32_nhwc", False, True),
                ("fp32_nchw", False, False),
            ):
                out[label] = self._rate(self._network(self.batch, bf16=bf16, nhwc=nhwc), self.batch)
        return out

    def grams_only(self) -> dict:
        """The five style Grams, forward and backward, from bf16 channels_last features."""
        params = StyleParams()
        vgg = load_vgg(params.style_layers, params.weights, params.pooling, self.device)
        vgg = vgg.to(memory_format=torch.channels_last)
        x = torch.rand(self.batch, 3, self.size, self.size, device=self.device)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), torch.autocast(self.device, dtype=torch.bfloat16):
            feats = {k: v.detach().requires_grad_(True) for k, v in vgg(x).items()}

        def step(fn):
            sum(fn(f).square().mean() for f in feats.values()).backward()
            for f in feats.values():
                f.grad = None

        variants = [
            ("fp32_path", False, gram_fp32_path),
            ("fp32_path_tf32", True, gram_fp32_path),
            ("bf16_operands", False, gram),  # the engine's: nst_core.engine.losses.gram
        ]
        out = {}
        with torch.no_grad():
            reference = {}
            for k, f in feats.items():  # float64 Grams, the yardstick for each variant
                b, c, h, w = f.shape
                flat = f.double().reshape(b, c, h * w)
                reference[k] = torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)
        for label, tf32, fn in variants:
            with flags(matmul_tf32=tf32):
                self.timed(lambda fn=fn: step(fn), 3)
                times, _ = self.timed(lambda fn=fn: step(fn), 10)
                with torch.no_grad():
                    error = max(
                        ((fn(f).double() - reference[k]).norm() / reference[k].norm()).item()
                        for k, f in feats.items()
                    )
            out[label] = {"ms": statistics.median(times) * 1000, "max_relative_error": error}
        return out

    def compiled(self) -> dict:
        with flags(cudnn_benchmark=True):
            step = self._network(self.batch, bf16=True, nhwc=True, compiled=True)
            began = time.perf_counter()
            self.timed(step, 1)
            compile_s = time.perf_counter() - began
            row = self._rate(step, self.batch)
        return row | {"compile_s": compile_s}

    def look(self) -> dict:
        """The engine as users run it, judged by the look metric against the baseline."""
        if not self.baseline_images:
            return {"skipped": "needs the baseline section"}
        metric = LookMetric(self.content, self.style, self.size)
        baseline = [asdict(metric(images.to_image(i[0]))) for i in self.baseline_images]
        out = {
            "baseline_style": statistics.median(b["style"] for b in baseline),
            "baseline_content": statistics.median(b["content"] for b in baseline),
        }
        per_image = self.report.get("baseline", {}).get("cudnn_default", {}).get("s_per_image")
        # At equal time the engine could run about ten times the baseline's evaluations;
        # a few hundred past its default already show where its look settles.
        towards_equal_time = 4 if self.dry else 2 * EVALUATIONS
        runs = {
            "defaults": ({}, self.engine_iterations),
            "equal_evaluations": ({"stop_tolerance": 0.0}, self.baseline_evals),
            "towards_equal_time": ({"stop_tolerance": 0.0}, towards_equal_time),
        }
        for label, (overrides, iterations) in runs.items():
            row, results = self.engine_run(
                self.batch, iterations, settings=overrides, tutorial=False
            )
            row["look"] = asdict(metric(results[0].image))
            row["evaluations_run"] = [r.evaluations for r in results]
            row["as_good_as_baseline"] = (
                row["look"]["style"] <= out["baseline_style"]
                and row["look"]["content"] <= out["baseline_content"]
            )
            if per_image:
                row["speedup_vs_baseline"] = row["images_per_hour"] / (3600 / per_image)
            out[label] = row
        return out

    def profile(self) -> dict:
        """Where one evaluation's time goes, from torch.profiler over a few evaluations."""
        from torch.profiler import ProfilerActivity, profile, record_function

        iterations = 2 if self.dry else 6
        params = StyleParams(
            size=self.size, device=self.device, iterations=iterations, stop_tolerance=0.0
        )
        pairs = [Pair(self.content, [self.style], params)] * self.batch

        def labelled_gram(features):
            with record_function("nst::gram"):
                return gram(features)

        class LabelledLBFGS(LBFGSSteps):
            def tell(self, losses, grad):
                with record_function("nst::lbfgs"):
                    super().tell(losses, grad)

        stylize_pairs(pairs)  # warm-up: autotuning and allocations stay out of the table
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        with profile(activities=activities, record_shapes=True) as prof:
            stylize_pairs(pairs, optimizer=LabelledLBFGS, gram_of=labelled_gram)
        self.sync()
        averages = prof.key_averages(group_by_input_shape=True)
        device = "device" if self.cuda else "cpu"

        def self_ms(event) -> float:
            total = event.self_device_time_total if self.cuda else event.self_cpu_time_total
            return total / 1000 / iterations

        rows = sorted(averages, key=self_ms, reverse=True)
        table = [
            {
                "op": e.key,
                "input_shapes": str(e.input_shapes)[:120],
                "calls_per_evaluation": e.count / iterations,
                f"self_{device}_ms_per_evaluation": round(self_ms(e), 3),
            }
            for e in rows[:30]
        ]
        totals: dict[str, float] = {}
        for event in averages:
            category = _category(event.key)
            totals[category] = totals.get(category, 0.0) + self_ms(event)
        # Ranges we opened: their time includes the ops inside, which the categories count.
        ranges = {
            e.key: round(
                (e.device_time_total if self.cuda else e.cpu_time_total) / 1000 / iterations, 3
            )
            for e in prof.key_averages()
            if e.key.startswith("nst::")
        }
        whole = sum(totals.values())
        return {
            "evaluations": iterations,
            "batch": self.batch,
            "time": f"self {device} time, ms per evaluation of the whole batch",
            "categories_ms": {k: round(v, 3) for k, v in sorted(totals.items())},
            "categories_share": {k: round(v / whole, 3) for k, v in sorted(totals.items())},
            "labelled_ranges_ms": ranges,
            "top_ops": table,
        }

    def cuda_graphs(self) -> dict:
        """The network's forward + backward replayed from CUDA graphs at the unit's shape."""
        params = StyleParams(size=self.size, device=self.device, stop_tolerance=0.0)
        names = network_layers(params)
        network = network_for(params, self.device).to(memory_format=torch.channels_last)
        shape = (self.batch, 3, self.size, self.size)

        class Tupled(torch.nn.Module):
            def forward(self, x):
                with torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False):
                    features = network(x)
                return tuple(features[name] for name in names)

        sample = torch.rand(shape, device=self.device).contiguous(memory_format=torch.channels_last)
        graphed = torch.cuda.make_graphed_callables(Tupled(), (sample.requires_grad_(True),))

        class Replayed(torch.nn.Module):
            """The graph for the optimised image; targets (other shapes, no grad) run eager."""

            def forward(self, x):
                if tuple(x.shape) == shape and x.requires_grad:
                    x = x.contiguous(memory_format=torch.channels_last)
                    return dict(zip(names, graphed(x), strict=True))
                return network(x)

        its = self.lever_iterations
        return {
            "eager": self.engine_rate(self.batch, its, stop_tolerance=0.0),
            "graphed": self.engine_rate(
                self.batch, its, parts={"network": Replayed()}, stop_tolerance=0.0
            ),
        }

    def compile_unit_thread(self) -> dict:
        """torch.compile as a flow's unit would use it: from a worker thread, once per shape."""
        lock = threading.Lock()
        compiled: dict[tuple, torch.nn.Module] = {}
        params = StyleParams(size=self.size, device=self.device)

        def network():
            with lock:  # PT2 compiles are not thread-safe (pytorch#118260)
                key = (self.size, self.batch)
                if key not in compiled:
                    compiled[key] = torch.compile(network_for(params, self.device))
                return compiled[key]

        def unit():
            began = time.perf_counter()
            row = self.engine_rate(self.batch, self.lever_iterations, parts={"network": network()})
            return row | {"wall_with_compile_s": time.perf_counter() - began}

        with ThreadPoolExecutor(1, thread_name_prefix="unit") as pool:
            first = pool.submit(unit).result()
            again = pool.submit(unit).result()  # the compiled network reused, no recompile
        return {"first_unit": first, "second_unit": again}

    def run(self, only: set[str] | None = None) -> None:
        torch.backends.cudnn.benchmark = False  # the library default, until a section says
        sections = [
            ("describe", 0, self.describe),
            ("ceilings", 10, self.ceilings),
            ("grams_only", 10, self.grams_only),
            ("baseline", 60, self.baseline),
            ("engine", 60, self.engine),
            ("quality", 20, self.quality),
            ("convergence", 40, self.convergence),
            ("levers", 40, self.levers),
            ("memory_model", 60, self.memory_model),
            ("look", 60, self.look),
            ("profile", 20, self.profile),
            ("tiled_large", 60, self.tiled_large),
            ("cuda_graphs", 30, self.cuda_graphs),
            ("batch_sweep", 40, self.batch_sweep),
            ("network_only", 20, self.network_only),
            ("torch_compile", 120, self.compiled),
            ("compile_unit_thread", 120, self.compile_unit_thread),
        ]
        cuda_only = {"cuda_graphs"}
        compiles = {"torch_compile", "compile_unit_thread"}
        for name, need_s, fn in sections:
            if only is not None and name not in only and name != "describe":
                continue
            if name in compiles and not self.with_compile:
                self.report[name] = {"skipped": "--no-compile"}
            elif name in cuda_only and not self.cuda:
                self.report[name] = {"skipped": "CUDA only"}
            else:
                self.section(name, need_s, fn)
        skipped = [n for n, r in self.report.items() if isinstance(r, dict) and "skipped" in r]
        self.report["skipped_sections"] = skipped
        self.save()
        print(f"skipped: {', '.join(skipped) or 'none'}", flush=True)


def main() -> None:
    dry = "--dry-run" in sys.argv
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    budget = float(os.environ.get("NST_GPU_BENCH_BUDGET_S", "420"))
    default = (
        Path(os.environ["OUT"]) if os.environ.get("OUT") else Path(__file__).parent / "results"
    )
    out = Path(args[0]) if args else default / ("gpu-dry-run.json" if dry else "gpu.json")
    bench = Bench(out, dry, budget, with_compile="--no-compile" not in sys.argv)
    only = os.environ.get("NST_GPU_BENCH_SECTIONS")
    bench.run(set(only.split(",")) if only else None)
    print(f"results: {out}")


if __name__ == "__main__":
    main()
