"""Kernel attention of Dynamic Convolution / CondConv: alpha(x) from globally pooled features."""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from ._validate import check_choice, check_positive_int
from .precision import as_input, widened, without_autocast

Routing = Literal["softmax", "sigmoid"]
ROUTINGS = get_args(Routing)
MIN_HIDDEN = 4  # docs/method.md#dynamic-layers: a floor for narrow layers, so C_in // r never collapses to 1 unit


class KernelAttention(nn.Module):
    """alpha(x) = softmax(FC2(ReLU(FC1(GAP(x)))) / tau) (DY-Conv) or sigmoid(...) (CondConv).

    FC1 has no bias; FC2's bias starts at 0 so every kernel starts with the same weight.
    """

    def __init__(self, in_channels: int, num_kernels: int, reduction: int = 16, routing: str = "softmax"):
        super().__init__()
        check_positive_int("num_kernels", num_kernels)
        check_positive_int("reduction", reduction)
        check_choice("routing", routing, ROUTINGS)
        self.routing = routing
        hidden = max(MIN_HIDDEN, in_channels // reduction)
        self.fc1 = nn.Linear(in_channels, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, num_kernels)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        with without_autocast(x):  # float32 (padnet.layers.precision): logits divided by up to tau = 30
            hidden = F.relu(F.linear(widened(x.mean(dim=(2, 3))), widened(self.fc1.weight)))
            logits = F.linear(hidden, widened(self.fc2.weight), widened(self.fc2.bias))
        if self.routing == "sigmoid":
            return as_input(torch.sigmoid(logits), x)
        return as_input(torch.softmax(logits / temperature, dim=1), x)
