"""One measured run in a fresh process (so peak memory is its own): prints a JSON line.

python -m bench.run_one baseline 256
python -m bench.run_one engine 256 '{"scales": [128]}'
"""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import asdict

from bench.baseline import EVALUATIONS, TUTORIAL_SETTINGS, run_baseline
from bench.common import Evaluator, inputs, tensors
from bench.look import LookMetric
from nst_core.engine import images
from nst_core.engine.loop import stylize
from nst_core.engine.params import StyleParams
from nst_core.engine.targets import Pair


def main() -> None:
    mode, size = sys.argv[1], int(sys.argv[2])
    overrides = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    content, style, _ = inputs()
    # Both sides optimise the tutorial's objective, so their losses compare; the look metric
    # (bench/look.py) says what each output looks like.
    params = StyleParams(size=size, device="cpu", **{**TUTORIAL_SETTINGS, **overrides})
    evaluator = Evaluator(content, style, params.model_copy(update={"precision": "fp32"}))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    if mode == "baseline":
        content_t, style_t = tensors(content, style, size)
        raw_image, raw = run_baseline(content_t, style_t, params, EVALUATIONS)
        image = images.to_tensor(images.to_image(raw_image))  # 8-bit, as the engine's output
        trace = [(seconds, loss) for seconds, _, loss in raw]
        evaluations = len(raw)
    else:
        # Loss trace at the output size, every evaluation: the engine's own objective there
        # is the evaluator's (fp32 on this CPU), so time-to-quality can be read from it.
        params = params.model_copy(update={"history_every": 1})
        result = stylize(Pair(content, [style], params))
        image = images.to_tensor(result.image)
        trace = [(r.seconds, r.total) for r in result.history if r.scale == size]
        evaluations = result.history[-1].evaluation
    wall = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "mode": mode,
                "size": size,
                "params": params.model_dump(mode="json"),
                "wall_s": wall,
                "evaluations": evaluations,
                "final_loss": evaluator(image),
                "look": asdict(LookMetric(content, style, size)(images.to_image(image[0]))),
                "trace": trace,
                "peak_rss_mb": peak / 1024,
                "rss_before_mb": rss_before / 1024,
            }
        )
    )


if __name__ == "__main__":
    main()
