"""Adam for the pose's few parameters, without torch.optim.

torch.optim's first use imports torch._dynamo (its methods are wrapped to disable the compiler), which costs about
2.5 s on a laptop CPU: a sixth of a single `xraytodrr register` call, for six numbers. This is the same update as
`torch.optim.Adam` with its defaults (Kingma & Ba, bias-corrected; no weight decay, no amsgrad), and the part of
its interface the optimiser uses (`param_groups` with a mutable "lr", `zero_grad`, `step`); a test checks it
against torch.optim.Adam step by step.
"""

from __future__ import annotations

import torch


class PoseAdam:
    def __init__(self, groups: list[dict], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.param_groups = [dict(g) for g in groups]
        self.betas, self.eps = betas, eps
        self._state = {id(p): (torch.zeros_like(p), torch.zeros_like(p)) for g in groups for p in g["params"]}
        self._steps = 0

    def zero_grad(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self._steps += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1 ** self._steps, 1 - b2 ** self._steps
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                m, v = self._state[id(p)]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                p.sub_(group["lr"] * (m / c1) / ((v / c2).sqrt() + self.eps))
