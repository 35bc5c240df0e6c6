"""``padnet.compact(model)`` and ``padnet.deploy(model)``: the permanent forms of a partitioned model.

``compact`` keeps a PAD layer's training form but drops the entries its mask does not use; ``deploy``
gives the inference form of a PAD model (stored as docs/method.md#storage says).

Every partially dynamic layer (a ``PartiallyDynamic`` training form) is replaced by its deployed layer
(its ``deployed_form``, a ``DeployedPartiallyDynamic``), which stores only the static entries (times
lambda_s), the K x nnz dynamic entries (times lambda_d) and an index list; attention and routers are
unchanged. Outputs equal the training form's in eval mode. The mask is
frozen for good: deploy after partitioning and training.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .errors import UsageError
from .layers.protocol import DeployedPartiallyDynamic, PartiallyDynamic
from .layers.queries import pad_layers


def deploy(model: nn.Module, allow_unpartitioned: bool = False) -> nn.Module:
    """Replace every PAD layer of ``model`` by its deployed form (``layer.to_deployed()``), in place;
    returns ``model`` in eval mode.

    Args:
        model: a model holding partially dynamic layers (after ``padnet.convert`` and the partition).
        allow_unpartitioned: deploy even when every PAD layer is still fully dynamic (mask all ones, as
            ``convert`` leaves it): a deployed DY-Conv / MoE. Without it that is refused.

    Raises ValueError if the model has no PAD layer (an already deployed model is returned as is) or
    was never partitioned.
    """
    if isinstance(model, PartiallyDynamic):
        raise UsageError("deploy() takes a model holding PAD layers; for one layer use layer.to_deployed()")
    targets = pad_layers(model)
    if not targets:
        if any(isinstance(m, DeployedPartiallyDynamic) for m in model.modules()):
            return model.eval()  # already deployed
        raise UsageError(f"deploy() found no PAD layer (a partially dynamic layer from padnet.convert) in "
                         f"{type(model).__name__}")
    if not allow_unpartitioned:
        refuse_unpartitioned(targets, "deploy")
    for name, layer in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.to_deployed())
    return model.eval()


def refuse_unpartitioned(layers: Sequence[tuple[str, PartiallyDynamic]], what: str) -> None:
    """Raise ValueError when every PAD layer's mask is still all ones (the partition never ran): its
    ``what`` (deploy, compact) would keep every entry dynamic, which is rarely what was meant."""
    masks = [layer.mask for _, layer in layers]
    if not masks or any(m.is_meta for m in masks) or not all(bool(m.all()) for m in masks):
        return
    raise UsageError(
        f"{what}() on a model whose {len(masks)} PAD layers are all fully dynamic (every mask all ones: "
        f"padnet.partition has not run), which keeps K full kernels per layer; run padnet.partition(model, ...) "
        f"first, or pass {what}(model, allow_unpartitioned=True) to {what} the fully dynamic model on purpose"
    )


def compact(model: nn.Module, allow_unpartitioned: bool = False) -> nn.Module:
    """Make every PAD layer's mask permanent (``PartiallyDynamic.compact``): only the
    used entries stay, so parameters and optimizer state built afterwards shrink. Call it after
    ``padnet.partition`` and before creating the optimizer. Returns ``model``.

    Args:
        model: a model holding PAD layers.
        allow_unpartitioned: compact even when every mask is still all ones (the partition never ran),
            which keeps every entry; refused without it.
    """
    layers = pad_layers(model)
    if not layers:
        raise UsageError(f"compact() found no PAD layer in {type(model).__name__}")
    if not allow_unpartitioned:
        refuse_unpartitioned(layers, "compact")
    for _, layer in layers:
        layer.compact()
    return model
