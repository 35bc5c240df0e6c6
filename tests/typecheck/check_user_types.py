"""Checked by mypy in `make lint`, never run: code a user of the typed API writes must type-check
(padnet ships py.typed). A loss function typed for its own batches is a valid ``loss_fn``."""

import torch
from torch import nn

import padnet


def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def partition_typed(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    return padnet.partition(model, batches, loss, dynamic_ratio=0.3).dynamic_ratio
