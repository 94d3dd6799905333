"""The lowest-loss point of each pair of a batch so far: what the loop returns is the best
image evaluated, not the last one (a line search's last trial may be worse)."""

from __future__ import annotations

import torch


class BestPoint:
    """Per-sample lowest-loss point seen so far, kept on the device without host syncs."""

    def __init__(self, x: torch.Tensor):
        self.x = x.detach().clone()
        self.total = torch.full((x.shape[0],), float("inf"), device=x.device)
        self.parts = torch.zeros(3, x.shape[0], device=x.device)

    def update(
        self, rows: list[int], x: torch.Tensor, total: torch.Tensor, parts: torch.Tensor
    ) -> None:
        """Take the evaluation of batch rows `rows` (x, total and parts hold those rows)."""
        index = torch.tensor(rows, device=self.x.device)
        now = self.total.index_select(0, index)
        better = total < now
        kept_x = self.x.index_select(0, index)
        self.x.index_copy_(0, index, torch.where(better.view(-1, 1, 1, 1), x, kept_x))
        self.total.index_copy_(0, index, torch.where(better, total, now))
        kept_parts = self.parts.index_select(1, index)
        self.parts.index_copy_(1, index, torch.where(better.unsqueeze(0), parts, kept_parts))
