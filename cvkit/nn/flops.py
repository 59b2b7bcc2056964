"""Parameter and FLOP counting (torch's flop counter; one multiply-add = 2 FLOPs)."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_gflops(model: nn.Module, size=(224, 224), macs: bool = True) -> float:
    """GFLOPs of one forward at `size`, reported as multiply-adds (the papers' 'FLOPs')
    when `macs` is true, else as torch counts them (2 per multiply-add)."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, *size)
    with FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    total = counter.get_total_flops()
    return total / (2e9 if macs else 1e9)
