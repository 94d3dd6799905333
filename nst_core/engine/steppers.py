"""The optimisers the loop drives, as ask/tell steppers over a (B, 3, H, W) batch.

A stepper gives the point to evaluate next (`ask`), takes each sample's loss and gradient
there (`tell`), and lets samples leave the batch (`keep`) so that pairs which have stopped
cost nothing while the rest go on. Every sample's path depends only on its own losses, so
leaving the batch changes nothing for the samples that stay.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Protocol

import torch

from nst_core.engine.optim import PerPairLBFGS
from nst_core.engine.params import StyleParams
from nst_core.engine.stopping import Stopping


class Stepper(Protocol):
    def ask(self) -> torch.Tensor:
        """The (B, 3, H, W) point to evaluate next."""

    def tell(self, losses: torch.Tensor, grad: torch.Tensor) -> None:
        """Per-sample losses (B,) and the gradient at the point `ask` gave."""

    def keep(self, rows: list[int]) -> None:
        """Go on with these batch rows only, in this order."""

    def converged(self) -> list[bool]:
        """Per row: whether the optimiser itself has nothing left to do."""


Optimizer = Callable[[torch.Tensor, StyleParams], Stepper]


class LBFGSSteps:
    """Our batched L-BFGS (optim.py): each sample its own history and line search."""

    def __init__(self, x: torch.Tensor, params: StyleParams, *, history_on: str = "device") -> None:
        self.shape = x.shape[1:]
        host = "cpu" if history_on == "host" else None
        self.opt = PerPairLBFGS(
            x.flatten(1), history_size=params.lbfgs_history, history_device=host
        )

    def ask(self) -> torch.Tensor:
        return self.opt.ask().view(-1, *self.shape)

    def tell(self, losses: torch.Tensor, grad: torch.Tensor) -> None:
        self.opt.tell(losses, grad.flatten(1))

    def keep(self, rows: list[int]) -> None:
        self.opt.keep(rows)

    def converged(self) -> list[bool]:
        return list(self.opt.done)


class AdamSteps:
    """torch's Adam on the batch: elementwise, so samples never influence each other."""

    def __init__(self, x: torch.Tensor, params: StyleParams) -> None:
        self.learning_rate = params.learning_rate
        self._start(x.detach().clone(), state=None)

    def _start(self, x: torch.Tensor, state: dict | None) -> None:
        self.x = x.requires_grad_(True)
        self.opt = torch.optim.Adam([self.x], lr=self.learning_rate)
        if state is not None:
            self.opt.state[self.x] = state

    def ask(self) -> torch.Tensor:
        return self.x.detach()

    def tell(self, losses: torch.Tensor, grad: torch.Tensor) -> None:
        self.x.grad = grad
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)

    def keep(self, rows: list[int]) -> None:
        index = torch.tensor(rows, device=self.x.device)
        state = {
            name: value.index_select(0, index) if value.dim() else value  # `step` is shared
            for name, value in self.opt.state[self.x].items()
        }
        self._start(self.x.detach().index_select(0, index), state)

    def converged(self) -> list[bool]:
        return [False] * self.x.shape[0]


OPTIMIZERS: dict[str, Optimizer] = {"lbfgs": LBFGSSteps, "adam": AdamSteps}


def optimizer_for(params: StyleParams, history_on: str) -> Optimizer:
    """The engine's own stepper for `params`, with L-BFGS's history where the execution
    put it (host memory frees a GPU's for the network)."""
    if params.optimizer == "lbfgs":
        return partial(LBFGSSteps, history_on=history_on)
    return OPTIMIZERS[params.optimizer]


def pairs_leaving(
    stepper: Stepper, stopping: Stopping, rows: list[int], total: torch.Tensor
) -> list[int]:
    """The pairs of `rows` that stop after this evaluation: their optimiser has converged,
    or their stopping rule says so."""
    leaving = [b for b, done in zip(rows, stepper.converged(), strict=True) if done]
    if stopping.enabled:
        stopped = stopping.update(rows, total.tolist())
        leaving += [b for b in stopped if b not in leaving]
    return sorted(leaving)
