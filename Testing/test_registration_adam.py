"""PoseAdam (the optimiser's Adam without torch.optim) takes the same steps as torch.optim.Adam."""

import torch

from XrayToDRRRegistrationLib.adam import PoseAdam


def _run(make, steps=25):
    torch.manual_seed(0)
    target = torch.randn(6, dtype=torch.float64)
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    t = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = make([{"params": [w], "lr": 1e-2}, {"params": [t], "lr": 1.0}])
    path = []
    for k in range(steps):
        opt.zero_grad()
        loss = ((torch.cat([w, t]) - target) ** 2 * torch.arange(1, 7)).sum() + torch.cat([w, t]).abs().sum()
        loss.backward()
        if k == 12:  # the optimiser's plateau rule lowers the rates in place
            for group in opt.param_groups:
                group["lr"] *= 0.1
        opt.step()
        path.append(torch.cat([w, t]).detach().clone())
    return torch.stack(path)


def test_pose_adam_takes_torch_adams_steps():
    ours, reference = _run(PoseAdam), _run(torch.optim.Adam)
    assert torch.allclose(ours, reference, rtol=1e-12, atol=1e-12)
    assert float((ours[0] - ours[-1]).abs().max()) > 0.1  # it moved
