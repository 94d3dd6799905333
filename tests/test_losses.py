import torch

from nst_core.engine.losses import (
    blend_grams,
    content_loss,
    energies,
    gram,
    style_loss,
    tv_loss,
)


def test_gram_matches_a_hand_computed_example():
    # C=2, H=1, W=3: F = [[1, 2, 3], [0, 1, -1]]
    features = torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, -1.0]]).view(1, 2, 1, 3)
    # F F^T = [[14, -1], [-1, 2]], divided by C*H*W = 6
    expected = torch.tensor([[14.0, -1.0], [-1.0, 2.0]]) / 6
    torch.testing.assert_close(gram(features)[0], expected)


def test_gram_batched_equals_one_by_one():
    features = torch.randn(4, 8, 5, 7)
    batched = gram(features)
    assert batched.shape == (4, 8, 8)
    for b in range(4):
        torch.testing.assert_close(batched[b : b + 1], gram(features[b : b + 1]))


def test_gram_is_fp32_under_bf16_autocast():
    features = torch.randn(2, 4, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = gram(features.bfloat16())
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, gram(features.bfloat16().float()))


def test_blend_weights_average_the_gram_targets():
    a = {"relu1_1": torch.ones(1, 2, 2)}
    b = {"relu1_1": torch.zeros(1, 2, 2)}
    blended = blend_grams([a, b], [0.75, 0.25])
    torch.testing.assert_close(blended["relu1_1"], torch.full((1, 2, 2), 0.75))
    # weights need not sum to one
    torch.testing.assert_close(blend_grams([a, b], [3, 1])["relu1_1"], blended["relu1_1"])


def test_losses_are_per_sample_and_independent_of_the_batch():
    feats = {"a": torch.randn(3, 4, 5, 5), "b": torch.randn(3, 6, 3, 3)}
    content_targets = {"a": torch.randn(3, 4, 5, 5)}
    style_targets = {"a": torch.rand(3, 4, 4), "b": torch.rand(3, 6, 6)}
    layer_weights = {"a": 0.25, "b": 0.75}
    c = content_loss(feats, content_targets)
    s = style_loss(feats, style_targets, layer_weights)
    assert c.shape == s.shape == (3,)
    for i in range(3):
        one = {k: v[i : i + 1] for k, v in feats.items()}
        torch.testing.assert_close(
            c[i : i + 1], content_loss(one, {"a": content_targets["a"][i : i + 1]})
        )
        expected = sum(
            w * (gram(one[n]) - style_targets[n][i : i + 1]).square().mean()
            for n, w in layer_weights.items()
        )
        torch.testing.assert_close(s[i], expected)
    torch.testing.assert_close(c, (feats["a"] - content_targets["a"]).square().mean(dim=(1, 2, 3)))


def test_tv_loss_is_zero_for_flat_images_and_grows_with_noise():
    flat = torch.full((2, 3, 8, 8), 0.5)
    noisy = flat + 0.1 * torch.randn_like(flat)
    assert torch.equal(tv_loss(flat), torch.zeros(2))
    assert (tv_loss(noisy) > 0).all()


def test_bf16_gram_is_the_fp32_gram_of_the_same_values_and_so_is_its_gradient():
    # Autocast hands the Gram bf16 features; its bf16 path must compute what the fp32 path
    # computes on those same values, and return the fp32 path's gradient rounded to bf16.
    torch.manual_seed(0)
    features = torch.randn(2, 16, 12, 10).bfloat16().contiguous(memory_format=torch.channels_last)
    fast = features.clone().requires_grad_(True)
    exact = features.float().requires_grad_(True)
    fast_gram, exact_gram = gram(fast), gram(exact)
    assert fast_gram.dtype == torch.float32
    torch.testing.assert_close(fast_gram, exact_gram, rtol=1e-5, atol=1e-6)
    upstream = torch.randn_like(exact_gram)
    (fast_gram * upstream).sum().backward()
    (exact_gram * upstream).sum().backward()
    assert fast.grad.dtype == torch.bfloat16
    rounding = (exact.grad.bfloat16().float() - exact.grad).norm()
    assert (fast.grad.float() - exact.grad).norm() <= 1.5 * rounding


def test_gram_gradient_is_autograds_of_the_formula_and_keeps_the_features_layout():
    # The Gram's hand-written backward must give what autograd gives for F F^T / (C*H*W),
    # for either memory layout; for channels_last features (the engine's) the gradient must
    # come back channels_last, which is what makes it cheaper than autograd's.
    torch.manual_seed(0)
    for layout in (torch.contiguous_format, torch.channels_last):
        features = torch.randn(2, 6, 5, 7).contiguous(memory_format=layout).requires_grad_(True)
        reference = features.detach().double().requires_grad_(True)
        flat = reference.reshape(2, 6, 35)
        expected = torch.bmm(flat, flat.transpose(1, 2)) / (6 * 35)
        upstream = torch.randn(2, 6, 6, dtype=torch.float64)
        (gram(features) * upstream.float()).sum().backward()
        (expected * upstream).sum().backward()
        torch.testing.assert_close(gram(features.detach()).double(), expected.detach())
        torch.testing.assert_close(features.grad.double(), reference.grad, rtol=1e-5, atol=1e-6)
        assert features.grad.is_contiguous(memory_format=layout)


def test_a_balanced_term_is_the_same_whatever_its_layers_magnitude():
    """Deep layers' Gram errors are 10-100x relu1_1's; balanced, each layer's term is relative
    to its target, so scaling a layer's features leaves its term unchanged."""
    torch.manual_seed(0)
    features = {"a": torch.rand(2, 4, 6, 6), "b": torch.rand(2, 8, 3, 3)}
    targets = {"a": gram(torch.rand(2, 4, 6, 6)), "b": gram(torch.rand(2, 8, 3, 3))}
    weights = {"a": 0.5, "b": 0.5}
    balanced = torch.tensor([True, True])
    base = style_loss(features, targets, weights, scales=energies(targets, balanced))
    scaled_features = {"a": features["a"], "b": 30.0 * features["b"]}
    scaled_targets = {"a": targets["a"], "b": 900.0 * targets["b"]}
    scaled = style_loss(
        scaled_features, scaled_targets, weights, scales=energies(scaled_targets, balanced)
    )
    torch.testing.assert_close(scaled, base)
    # The plain loss is dominated by the scaled layer; the content term balances the same way.
    assert (style_loss(scaled_features, scaled_targets, weights) > 100 * base).all()
    content = {"c": torch.rand(2, 3, 4, 4)}
    target = {"c": torch.rand(2, 3, 4, 4)}
    one = content_loss(content, target, energies(target, balanced))
    big = content_loss(
        {"c": 7 * content["c"]}, {"c": 7 * target["c"]}, energies({"c": 7 * target["c"]}, balanced)
    )
    torch.testing.assert_close(one, big)


def test_only_the_pairs_that_ask_are_balanced():
    targets = {"a": torch.full((2, 3, 3), 4.0)}
    scales = energies(targets, torch.tensor([True, False]))
    assert scales["a"].tolist() == [16.0, 1.0]
