"""Batched L-BFGS whose samples never influence each other.

`torch.optim.LBFGS` treats a (B, 3, H, W) image as one vector: its curvature history, step
size and line search are shared, so a pair's result would depend on which pairs share its
batch. Here every sample keeps its own history, direction, step and strong-Wolfe line
search, while the expensive part, the network evaluation, stays one batched call.

It is an ask/tell optimiser: `ask()` gives the (B, N) points to evaluate next, `tell()`
takes the per-sample losses and gradients there. Each sample's sequence of trial points
depends only on its own losses and gradients, so its trajectory is the same in any batch.
The vector algebra (two-loop recursion, trial points) runs batched on the device; only the
line-search bookkeeping, a few scalars per sample, runs on the host, one transfer per call.
"""

from __future__ import annotations

import math

import torch

from nst_core.engine.line_search import LineSearch, strong_wolfe

# The host-side state kept per sample, as lists indexed by the batch row.
_PER_SAMPLE = (
    "head",
    "count",
    "f",
    "done",
    "_search",
    "_search_f0",
    "_search_gtd0",
    "_t_low",
    "_f_low",
    "_t_host",
)


class PerPairLBFGS:
    """L-BFGS over (B, N) points, independent per sample, with strong-Wolfe line search."""

    def __init__(
        self,
        x0: torch.Tensor,
        *,
        history_size: int = 20,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
        history_device: torch.device | str | None = None,
    ):
        """`history_device`: where the curvature pairs live, x0's device by default. On the
        host (pinned) for a large image on a GPU: 2 x history_size image-sized vectors, read
        back one at a time by the two-loop recursion."""
        if x0.dim() != 2:
            raise ValueError("x0 must be (B, N)")
        self.batch, n = x0.shape
        self.m = history_size
        self.tolerance_grad = tolerance_grad
        self.tolerance_change = tolerance_change
        device, dtype = x0.device, x0.dtype
        self._rows = torch.arange(self.batch, device=device)
        self.x = x0.detach().clone()
        self.g = torch.zeros_like(self.x)
        self.d = torch.zeros_like(self.x)
        self.t = torch.zeros(self.batch, device=device, dtype=dtype)
        # Lowest sufficient-decrease point of each sample's current line search.
        self.g_low = torch.zeros_like(self.x)
        self.history_device = torch.device(history_device or device)
        pin = self.history_device.type == "cpu" and device.type == "cuda"
        self.s_hist = torch.zeros(
            self.batch, self.m, n, device=self.history_device, dtype=dtype, pin_memory=pin
        )
        self.y_hist = torch.zeros_like(self.s_hist, pin_memory=pin)
        self.rho = torch.zeros(self.batch, self.m, device=device, dtype=dtype)
        self.head = [0] * self.batch
        self.count = [0] * self.batch
        self.f = [math.inf] * self.batch
        self.done = [False] * self.batch
        self._search: list[LineSearch | None] = [None] * self.batch
        self._search_f0 = [0.0] * self.batch
        self._search_gtd0 = [0.0] * self.batch
        self._t_low = [0.0] * self.batch
        self._f_low = [0.0] * self.batch
        self._t_host = [0.0] * self.batch
        self._started = False

    # -- public ask/tell -------------------------------------------------------------------
    def ask(self) -> torch.Tensor:
        """The points to evaluate next, (B, N)."""
        if not self._started:
            return self.x
        return self.x + self.t.unsqueeze(1) * self.d

    def tell(self, f: torch.Tensor, g: torch.Tensor) -> None:
        """Per-sample losses (B,) and gradients (B, N) at the points `ask()` returned."""
        g = g.detach()
        if not self._started:
            self._started = True
            self.g.copy_(g)
            self.f = f.detach().tolist()
            self._new_directions(list(range(self.batch)), steepest=True)
            return
        gtd = (g * self.d).sum(dim=1)
        f_host, gtd_host = torch.stack([f.detach().to(gtd), gtd]).tolist()
        improved, finished = [], []
        for b in range(self.batch):
            if self.done[b]:
                continue
            t, fb = self._t_host[b], f_host[b]
            if (
                math.isfinite(fb)
                and fb < self._f_low[b]
                and (fb <= self._search_f0[b] + 1e-4 * t * self._search_gtd0[b])
            ):
                improved.append(b)
                self._t_low[b], self._f_low[b] = t, fb
            search = self._search[b]
            assert search is not None  # every sample not done has a line search running
            try:
                self._t_host[b] = search.send((fb, gtd_host[b]))
            except StopIteration:
                finished.append(b)
        if improved:
            mask = self._mask(improved)
            self.g_low = torch.where(mask.unsqueeze(1), g, self.g_low)
        if finished:
            self._accept(finished)
        self._sync_steps()

    def keep(self, rows: list[int]) -> None:
        """Go on with these samples only, in this order; the others leave the batch.

        Each kept sample's state moves with it, so its path is the one it had in the batch.
        """
        for name in ("x", "g", "d", "t", "g_low", "s_hist", "y_hist", "rho"):
            value = getattr(self, name)
            setattr(self, name, value.index_select(0, torch.tensor(rows, device=value.device)))
        for name in _PER_SAMPLE:
            values = getattr(self, name)
            setattr(self, name, [values[b] for b in rows])
        self.batch = len(rows)
        self._rows = torch.arange(self.batch, device=self.x.device)

    # -- internals -------------------------------------------------------------------------
    def _mask(self, rows: list[int]) -> torch.Tensor:
        mask = torch.zeros(self.batch, dtype=torch.bool)
        mask[rows] = True
        return mask.to(self.x.device)

    def _sync_steps(self) -> None:
        self.t = torch.tensor(self._t_host, dtype=self.x.dtype).to(self.x.device)

    def _accept(self, rows: list[int]) -> None:
        """Move finished samples to their line search's best point and update histories."""
        moved = [b for b in rows if self._t_low[b] > 0]
        stalled = [b for b in rows if self._t_low[b] == 0]
        if moved:
            mask = self._mask(moved).unsqueeze(1)
            t_low = torch.tensor([self._t_low[b] for b in range(self.batch)], dtype=self.x.dtype)
            s = t_low.to(self.x.device).unsqueeze(1) * self.d
            y = self.g_low - self.g
            ys_host = (y * s).sum(dim=1).tolist()
            grad_max = self.g_low.abs().amax(dim=1).tolist()
            self.x = torch.where(mask, self.x + s, self.x)
            self.g = torch.where(mask, self.g_low, self.g)
            for b in moved:
                if ys_host[b] > 1e-10:  # curvature condition; else skip this pair
                    slot = self.head[b]
                    self.s_hist[b, slot] = s[b]
                    self.y_hist[b, slot] = y[b]
                    self.rho[b, slot] = 1.0 / ys_host[b]
                    self.head[b] = (slot + 1) % self.m
                    self.count[b] = min(self.count[b] + 1, self.m)
                change = abs(self.f[b] - self._f_low[b])
                self.f[b] = self._f_low[b]
                if grad_max[b] <= self.tolerance_grad or change < self.tolerance_change:
                    self.done[b] = True
        restart = []
        for b in stalled:
            # No progress along the quasi-Newton direction: forget the curvature pairs and
            # retry along the gradient; a sample stalled on the gradient itself has converged.
            if self.count[b] > 0:
                self.count[b] = 0
                restart.append(b)
            else:
                self.done[b] = True
        if restart:
            self._new_directions(restart, steepest=True)
        fresh = [b for b in moved if not self.done[b]]
        if fresh:
            self._new_directions(fresh, steepest=False)
        for b in rows:
            if self.done[b]:
                self._t_host[b] = 0.0

    def _new_directions(self, rows: list[int], *, steepest: bool) -> None:
        mask = self._mask(rows).unsqueeze(1)
        direction = -self.g if steepest else self._two_loop()
        self.d = torch.where(mask, direction, self.d)
        gtd, grad_l1 = torch.stack([(self.g * self.d).sum(dim=1), self.g.abs().sum(dim=1)]).tolist()
        for b in rows:
            if gtd[b] > -self.tolerance_change:
                if steepest or self.count[b] == 0:
                    self.done[b] = True
                    self._t_host[b] = 0.0
                    continue
                # Not a descent direction: fall back to the gradient for this sample.
                self.count[b] = 0
                self._new_directions([b], steepest=True)
                continue
            # First step along the gradient is scaled to the gradient's size, as in torch.
            t0 = min(1.0, 1.0 / grad_l1[b]) if steepest else 1.0
            self._search_f0[b], self._search_gtd0[b] = self.f[b], gtd[b]
            self._t_low[b], self._f_low[b] = 0.0, self.f[b]
            search = strong_wolfe(self.f[b], gtd[b], t0, tolerance=self.tolerance_change)
            self._search[b] = search
            self._t_host[b] = next(search)
        self.g_low = torch.where(mask, self.g, self.g_low)
        self._sync_steps()

    def _two_loop(self) -> torch.Tensor:
        """H_k g for every sample at once; empty history slots have rho = 0 and drop out."""
        count = torch.tensor(self.count, device=self.x.device)
        head = torch.tensor(self.head, device=self.x.device)
        q = self.g.clone()
        alphas = []
        for j in range(self.m):
            slot = (head - 1 - j) % self.m
            rho = self.rho[self._rows, slot] * (j < count)
            alpha = rho * (self._pair(self.s_hist, slot) * q).sum(dim=1)
            q -= alpha.unsqueeze(1) * self._pair(self.y_hist, slot)
            alphas.append(alpha)
        newest = (head - 1) % self.m
        s_new, y_new = self._pair(self.s_hist, newest), self._pair(self.y_hist, newest)
        yy = (y_new * y_new).sum(dim=1)
        gamma = torch.where((count > 0) & (yy > 0), (s_new * y_new).sum(dim=1) / yy, 1.0)
        r = q * gamma.unsqueeze(1)
        for j in reversed(range(self.m)):
            slot = (head - 1 - j) % self.m
            rho = self.rho[self._rows, slot] * (j < count)
            beta = rho * (self._pair(self.y_hist, slot) * r).sum(dim=1)
            r += self._pair(self.s_hist, slot) * (alphas[j] - beta).unsqueeze(1)
        return -r

    def _pair(self, history: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """Each sample's history vector at its own `slot`, (B, N) on x's device."""
        if self.history_device == self.x.device:
            return history[self._rows, slot]
        rows = self._rows.to(self.history_device)
        return history[rows, slot.to(self.history_device)].to(self.x.device, non_blocking=True)
