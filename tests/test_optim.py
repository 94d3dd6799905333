import torch

from nst_core.engine.optim import PerPairLBFGS


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return (100 * (x[:, 1:] - x[:, :-1] ** 2) ** 2 + (1 - x[:, :-1]) ** 2).sum(dim=1)


def minimise(x0: torch.Tensor, evaluations: int, **options) -> PerPairLBFGS:
    opt = PerPairLBFGS(x0, **options)
    return go_on(opt, evaluations)


def go_on(opt: PerPairLBFGS, evaluations: int) -> PerPairLBFGS:
    for _ in range(evaluations):
        x = opt.ask().clone().requires_grad_(True)
        f = rosenbrock(x)
        f.sum().backward()
        opt.tell(f.detach(), x.grad)
    return opt


def test_minimises_each_sample():
    x0 = torch.randn(4, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    opt = minimise(x0, 200)
    assert (rosenbrock(opt.x) < 1e-6).all()
    assert (rosenbrock(x0) > 1).all()


def test_samples_follow_the_same_path_alone_and_batched():
    x0 = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    batched = minimise(x0, 40)  # stopped mid-way, while line searches are still in flight
    for b in range(3):
        alone = minimise(x0[b : b + 1], 40)
        assert torch.equal(alone.x[0], batched.x[b])


def test_as_good_as_torch_lbfgs_for_the_same_evaluations():
    x0 = torch.randn(1, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ours = rosenbrock(minimise(x0, 60).x).item()
    x = x0.clone().requires_grad_(True)
    reference = torch.optim.LBFGS(
        [x], max_iter=60, max_eval=60, line_search_fn="strong_wolfe", history_size=20
    )

    def closure():
        reference.zero_grad()
        loss = rosenbrock(x).sum()
        loss.backward()
        return loss

    reference.step(closure)
    assert ours <= rosenbrock(x.detach()).item() * 1.5 + 1e-9


def test_non_finite_losses_shrink_the_step_instead_of_diverging():
    # log barrier: loss is +inf (nan-free) outside x > 0, minimum at x = 1
    def barrier(x):
        safe = torch.where(x > 0, x, torch.ones_like(x))
        return torch.where(x > 0, safe - torch.log(safe), torch.full_like(x, float("inf"))).sum(1)

    opt = PerPairLBFGS(torch.full((2, 3), 5.0, dtype=torch.float64))
    for _ in range(60):
        x = opt.ask().clone().requires_grad_(True)
        f = barrier(x)
        f.sum().backward()
        grad = torch.nan_to_num(x.grad, nan=0.0, posinf=0.0, neginf=0.0)
        opt.tell(f.detach(), grad)
    torch.testing.assert_close(opt.x, torch.ones(2, 3, dtype=torch.float64), atol=1e-4, rtol=0)


def test_samples_that_leave_the_batch_change_nothing_for_those_that_stay():
    x0 = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    opt = minimise(x0, 17)  # mid-way, with line searches in flight
    opt.keep([3, 1])
    for _ in range(23):
        x = opt.ask().clone().requires_grad_(True)
        f = rosenbrock(x)
        f.sum().backward()
        opt.tell(f.detach(), x.grad)
    for row, b in enumerate([3, 1]):
        alone = minimise(x0[b : b + 1], 40)
        assert torch.equal(alone.x[0], opt.x[row])


def test_a_history_kept_elsewhere_gives_the_same_path():
    """The history on another device (the host, for a large image on a GPU) is read back
    pair by pair; "cpu:0" is not x's "cpu", so that path runs here too."""
    x0 = torch.randn(3, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    elsewhere = minimise(x0, 17, history_device=torch.device("cpu", 0))
    assert elsewhere.history_device != elsewhere.x.device
    elsewhere.keep([2, 0])
    go_on(elsewhere, 23)
    for row, b in enumerate([2, 0]):
        assert torch.equal(minimise(x0[b : b + 1], 40).x[0], elsewhere.x[row])
