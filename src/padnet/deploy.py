"""``padnet.deploy(model)``: the inference form of a PAD model (SPEC section 6 storage).

Every ``PADConv2d`` / ``PADMoELinear`` is replaced by its deployed layer, which stores only the
static entries (times lambda_s), the K x nnz dynamic entries (times lambda_d) and an index list;
attention and routers are unchanged. Outputs equal the training form's in eval mode. The mask is
frozen for good: deploy after partitioning and training.
"""

from __future__ import annotations

from torch import nn

from .layers import PADConv2d, PADMoELinear
from .layers.deployed_conv import DeployedPADConv2d
from .layers.deployed_moe import DeployedPADMoELinear

DEPLOYED_LAYERS = (DeployedPADConv2d, DeployedPADMoELinear)


def deploy(model: nn.Module) -> nn.Module:
    """Replace every PAD layer of ``model`` by its deployed form, in place; returns ``model`` in eval mode.

    Raises ValueError if the model has no PAD layer (an already deployed model is returned as is).
    """
    if isinstance(model, (PADConv2d, PADMoELinear)):
        raise ValueError("deploy() takes a model holding PAD layers; for one layer use DeployedPADConv2d.from_pad")
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, (PADConv2d, PADMoELinear))]
    if not targets:
        if any(isinstance(m, DEPLOYED_LAYERS) for m in model.modules()):
            return model.eval()  # already deployed
        raise ValueError(f"deploy() found no PAD layer (PADConv2d / PADMoELinear) in {type(model).__name__}")
    for name, layer in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        cls = DeployedPADConv2d if isinstance(layer, PADConv2d) else DeployedPADMoELinear
        setattr(parent, child, cls.from_pad(layer))
    return model.eval()
