import pytest
import torch
from imagegen import scene, stripes
from per_sample import PerSampleNetwork

from nst_core.engine import images, losses, targets
from nst_core.engine.loop import network_for, stylize, stylize_pairs
from nst_core.engine.objective import clamp_straight_through
from nst_core.engine.params import StyleParams
from nst_core.engine.steppers import LBFGSSteps
from nst_core.engine.targets import GramCache, Pair
from nst_core.errors import ImageError, ParamsError

SMALL = {"size": 64, "iterations": 40, "device": "cpu", "precision": "fp32"}


def params(**overrides) -> StyleParams:
    return StyleParams(**{**SMALL, **overrides})


def test_style_loss_falls_by_90_percent_at_64px(content_image, style_image):
    result = stylize(Pair(content_image, [style_image], params(iterations=60, history_every=1)))
    start = result.history[0]
    assert start.evaluation == 1
    assert result.final.style <= 0.1 * start.style
    assert result.image.size == (64, 48)
    # the content term was allowed to grow, but not to dominate
    assert result.final.total < start.total


def test_history_is_recorded_every_n_evaluations(content_image, style_image):
    result = stylize(Pair(content_image, [style_image], params(iterations=25, history_every=10)))
    assert [row.evaluation for row in result.history] == [10, 20, 25]
    assert set(result.history[0].model_dump()) == {
        "evaluation",
        "scale",
        "seconds",
        "total",
        "content",
        "style",
        "tv",
    }


def test_a_seed_makes_a_run_reproducible_byte_for_byte(content_image, style_image):
    def run(seed):
        pair = Pair(content_image, [style_image], params(init="noise", seed=seed, iterations=20))
        return images.encode_image(stylize(pair).image, "out.png")

    assert run(3) == run(3)
    assert run(3) != run(4)


def mixed_pairs(iterations: int) -> list[Pair]:
    """Four pairs that differ in everything a batch allows to differ."""
    n = {"iterations": iterations}
    return [
        Pair(scene(seed=1), [stripes(seed=1)], params(style_weight=1e3, **n)),
        Pair(
            scene(seed=2),
            [stripes(seed=2), stripes(seed=3)],
            params(content_weight=5.0, style_layer_weights=(1, 1, 1, 1, 4), **n),
            style_weights=[0.3, 0.7],
        ),
        Pair(scene(seed=3), [stripes(seed=4)], params(tv_weight=10.0, init="noise", seed=9, **n)),
        Pair(scene(seed=4), [stripes(seed=5)], params(init="style", preserve_color=True, **n)),
        Pair(scene(seed=5), [stripes(seed=6)], params(init="palette", **n)),
    ]


def test_the_engine_couples_no_pair_to_its_batch(one_thread):
    """With batch-invariant arithmetic, a pair's output is identical alone or batched."""
    pairs = mixed_pairs(iterations=15)
    network = PerSampleNetwork(network_for(pairs[0].params, "cpu"))
    batched = stylize_pairs(pairs, network=network)
    for pair, together in zip(pairs, batched, strict=True):
        alone = stylize(pair, network=network)
        assert images.encode_image(alone.image, "a.png") == images.encode_image(
            together.image, "b.png"
        )
        assert alone.history == [
            row.model_copy(update={"seconds": alone_row.seconds})
            for row, alone_row in zip(together.history, alone.history, strict=True)
        ]


def test_batched_network_gives_the_same_quality_as_one_by_one():
    """Batched convolutions round differently; the optimisation lands close, not bit-equal."""
    pairs = mixed_pairs(iterations=40)
    for pair, together in zip(pairs, stylize_pairs(pairs), strict=True):
        alone = stylize(pair)
        difference = images.to_tensor(alone.image) - images.to_tensor(together.image)
        assert difference.abs().mean().item() < 0.05
        assert together.final.total == pytest.approx(alone.final.total, rel=0.15)


def test_adam_reduces_the_loss(content_image, style_image):
    result = stylize(
        Pair(
            content_image,
            [style_image],
            params(optimizer="adam", iterations=60, history_every=1, learning_rate=0.03),
        )
    )
    assert result.final.total < 0.5 * result.history[0].total


def test_coarse_to_fine_runs_each_scale_and_ends_at_size(content_image, style_image):
    result = stylize(Pair(content_image, [style_image], params(scales=(32, 64), iterations=10)))
    assert sorted({row.scale for row in result.history}) == [32, 64]
    assert result.history[-1].evaluation == 20
    assert result.image.size == (64, 48)


def test_preserve_color_keeps_the_content_colours(content_image, style_image):
    result = stylize(Pair(content_image, [style_image], params(preserve_color=True)))
    content = images.to_tensor(content_image)
    out = images.to_tensor(result.image)
    chroma = lambda t: images.rgb_to_yiq(t)[:, 1:]  # noqa: E731
    plain = images.to_tensor(stylize(Pair(content_image, [style_image], params())).image)
    assert (chroma(out) - chroma(content)).abs().mean() < 0.02
    assert (chroma(plain) - chroma(content)).abs().mean() > 2 * (
        chroma(out) - chroma(content)
    ).abs().mean()


@pytest.mark.parametrize("init", ["content", "palette", "noise", "style"])
def test_every_init_reduces_the_loss(init, content_image, style_image):
    result = stylize(Pair(content_image, [style_image], params(init=init, history_every=1)))
    assert result.final.total < result.history[0].total


def test_the_palette_start_has_the_paintings_colours_and_the_photos_layout():
    content = scene(seed=7).resize((48, 36))
    # A painting in other colours, inside the 0-1 range (a palette past it would clip).
    painting = images.to_tensor(scene(seed=8).resize((40, 40)))[:, [2, 0, 1]] * 0.5 + 0.15
    style = images.to_image(painting)
    result = stylize(Pair(content, [style], params(init="palette", iterations=1)))
    start = images.to_tensor(result.image)
    photo = images.to_tensor(images.resize(content, result.image.size))
    start_mean, start_cov = images.colour_statistics(start)
    paint_mean, paint_cov = images.colour_statistics(painting)
    photo_mean, photo_cov = images.colour_statistics(photo)
    # Moved to the painting's palette (one evaluation changes little): far nearer its mean
    # and covariance than the photo was...
    assert (start_mean - paint_mean).norm() < 0.2 * (photo_mean - paint_mean).norm()
    assert (start_cov - paint_cov).norm() < 0.3 * (photo_cov - paint_cov).norm()
    # ...while the layout is the photo's: each pixel is (nearly) one affine map of the
    # photo's pixel there, so a least-squares fit of one on the other explains almost all.
    x = torch.cat([photo.reshape(3, -1).T, torch.ones(photo[0, 0].numel(), 1)], dim=1)
    y = start.reshape(3, -1).T
    residual = y - x @ torch.linalg.lstsq(x, y).solution
    assert residual.square().sum() < 0.1 * (y - y.mean(dim=0)).square().sum()


def test_colour_matching_reaches_the_target_mean_and_covariance():
    torch.manual_seed(0)
    source = torch.rand(1, 3, 20, 30)
    target = torch.rand(1, 3, 25, 25) * 0.3 + 0.2
    mean, covariance = images.colour_statistics(target)
    moved_mean, moved_covariance = images.colour_statistics(
        images.match_colours(source, mean, covariance)
    )
    assert torch.allclose(moved_mean, mean, atol=1e-3)
    assert torch.allclose(moved_covariance, covariance, atol=1e-4)


def test_style_targets_are_computed_once_per_style_image():
    style = stripes()
    cache = GramCache()
    calls = []
    original = cache.get

    def counting_get(key, image, compute, ident=None):
        def counted():
            calls.append(image)
            return compute()

        return original(key, image, counted, ident)

    cache.get = counting_get
    pairs = [Pair(scene(seed=s), [style], params(iterations=2)) for s in range(3)]
    stylize_pairs(pairs, cache=cache)
    stylize(Pair(scene(seed=5), [style], params(iterations=2)), cache=cache)
    assert len(calls) == 1


def test_style_scale_changes_the_style_targets(content_image, style_image):
    small = stylize(
        Pair(content_image, [style_image], params(style_scale=0.5, iterations=1, history_every=1))
    )
    full = stylize(Pair(content_image, [style_image], params(iterations=1, history_every=1)))
    assert small.history[0].style != full.history[0].style


def test_image_too_small_for_the_deepest_layer_names_it():
    thin = scene(width=200, height=4)
    with pytest.raises(ImageError, match=r"content: too small for layer relu5_1 at 64x1 px"):
        stylize(Pair(thin, [stripes()], params()))


def test_pairs_with_different_schedules_cannot_share_a_batch():
    pairs = [Pair(scene(), [stripes()], params()), Pair(scene(), [stripes()], params(iterations=5))]
    with pytest.raises(ParamsError, match="must share"):
        stylize_pairs(pairs)


def test_bf16_runs_and_keeps_losses_fp32(content_image, style_image):
    result = stylize(Pair(content_image, [style_image], params(precision="bf16", iterations=10)))
    assert result.precision == "bf16"
    assert result.final.style > 0


def test_gram_cache_keeps_the_most_recently_used_entries():
    cache = GramCache(max_entries=2)
    images_ = [stripes(seed=i) for i in range(3)]
    computed = []

    def get(index):
        return cache.get(("k",), images_[index], lambda: computed.append(index) or {}, f"s{index}")

    get(0), get(1), get(0), get(2)  # 1 is now the least recently used, and goes
    get(0)
    get(1)
    assert computed == [0, 1, 2, 1]


def test_the_clamp_shows_the_written_values_but_passes_the_whole_gradient():
    # Pixels pushed past 0 or 1 must still feel the loss, or they stay out for good.
    x = torch.tensor([-0.5, 0.25, 1.5], requires_grad=True)
    y = clamp_straight_through(x)
    assert y.tolist() == [0.0, 0.25, 1.0]
    (y * torch.tensor([2.0, 3.0, -4.0])).sum().backward()
    assert x.grad.tolist() == [2.0, 3.0, -4.0]


def test_colour_preserving_targets_never_mix_up_two_contents(monkeypatch):
    """A shared cache (as the flow keeps one per process) must not hand one content's
    luminance-matched style targets to another. Forced here as CPython does it by chance:
    the second content gets the first one's address (id), freed in between."""
    style = stripes(seed=5)
    first, second = scene(seed=1), scene(seed=8)
    settings = params(preserve_color=True, iterations=3, size=48)

    def run(content, cache):
        pair = Pair(content, [style], settings, style_ids=["the-style"])
        return images.to_tensor(stylize(pair, cache=cache).image)

    monkeypatch.setattr(targets, "id", lambda obj: 4242, raising=False)  # one address for all
    shared = GramCache()
    run(first, shared)
    mixed = run(second, shared)
    fresh = run(second, GramCache())
    assert torch.equal(mixed, fresh)
    # Identities given by the caller (the runner passes the content's sha256) are used as is.
    assert Pair(first, [style], content_id="abc").content_identity() == "abc"
    assert Pair(first, [style]).content_identity() == Pair(first.copy(), [style]).content_identity()
    assert Pair(first, [style]).content_identity() != Pair(second, [style]).content_identity()


def test_the_network_optimiser_and_gram_are_parts_a_caller_passes(content_image, style_image):
    """What a test or benchmark hands the engine is what runs: nothing needs patching."""
    settings = params(iterations=4, size=32)
    calls = {"network": 0, "optimizer": 0, "gram": 0}

    class CountedNetwork(PerSampleNetwork):
        def forward(self, x):
            calls["network"] += 1
            return self.inner(x)

    def optimizer(x, p):
        calls["optimizer"] += 1
        return LBFGSSteps(x, p)

    def gram_of(features):
        calls["gram"] += 1
        return losses.gram(features)

    result = stylize(
        Pair(content_image, [style_image], settings),
        network=CountedNetwork(network_for(settings, "cpu")),
        optimizer=optimizer,
        gram_of=gram_of,
    )
    assert calls["optimizer"] == 1
    assert calls["network"] == 1 + 1 + 4  # the content, the style, then each evaluation
    assert calls["gram"] == len(settings.style_layers) * (1 + 4)
    assert [row.evaluation for row in result.history] == [4]


class CountingNetwork(PerSampleNetwork):
    """PerSampleNetwork that notes the batch size of every call."""

    def __init__(self, inner):
        super().__init__(inner)
        self.batches: list[int] = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        return super().forward(x)


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_pairs_that_stop_leave_the_batch_and_the_rest_go_on_unchanged(optimizer, one_thread):
    iterations = 30
    # A loose rule stops pairs 0, 2 and 4 early; pair 1 never stops; pair 3 stops late.
    rules = [(0.5, 3), (0.0, 20), (0.3, 2), (0.02, 10), (0.4, 3)]
    pairs = [
        Pair(
            pair.content,
            pair.styles,
            pair.params.model_copy(
                update={
                    "stop_tolerance": tolerance,
                    "stop_window": window,
                    "optimizer": optimizer,
                    "learning_rate": 0.03,
                }
            ),
            style_weights=pair.style_weights,
        )
        for pair, (tolerance, window) in zip(mixed_pairs(iterations), rules, strict=True)
    ]
    network = CountingNetwork(network_for(pairs[0].params, "cpu"))
    batched = stylize_pairs(pairs, network=network)

    evaluations = [result.evaluations for result in batched]
    assert evaluations[1] == iterations
    assert min(evaluations[0], evaluations[2]) < iterations
    for result in batched:
        assert result.history[-1].evaluation == result.evaluations
    # The batch shrank as pairs stopped: at evaluation k it held the pairs not yet stopped.
    optimising = network.batches[-max(evaluations) :]
    assert optimising == [sum(n >= k for n in evaluations) for k in range(1, max(evaluations) + 1)]
    assert optimising[0] == len(pairs) and optimising[-1] < len(pairs)
    for pair, together in zip(pairs, batched, strict=True):
        alone = stylize(pair, network=network)
        assert alone.evaluations == together.evaluations
        assert images.encode_image(alone.image, "a.png") == images.encode_image(
            together.image, "b.png"
        )


def test_a_pair_stopped_at_a_coarse_scale_goes_on_at_the_next(content_image, style_image):
    loose = params(scales=(32,), iterations=40, stop_tolerance=0.5, stop_window=3, history_every=5)
    result = stylize(Pair(content_image, [style_image], loose))
    by_scale = {}
    for row in result.history:
        by_scale.setdefault(row.scale, []).append(row.evaluation)
    assert sorted(by_scale) == [32, 64]
    at_32 = by_scale[32][-1]
    assert at_32 < 40  # stopped early at 32 px ...
    assert by_scale[64][0] > at_32  # ... and counted on at 64 px
    assert result.evaluations == result.history[-1].evaluation < 80
