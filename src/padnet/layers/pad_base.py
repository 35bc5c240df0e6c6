"""The machinery every PAD layer shares: mode mask, scale factors and the compact storage form.

A PAD layer owns K (or E) full dynamic kernels ``weight`` (K kernels, each of ``kernel_shape``,
flattened for convolutions so ``model.to(memory_format=torch.channels_last)`` works) and one
static kernel ``static_weight`` of ``kernel_shape``; the bool buffer ``mask`` (kernel shape, shared by
all K kernels) marks the dynamic entries (docs/method.md#pad-layers). Like ``torch.nn.utils.prune``, the mask is a
buffer beside the parameters; ``compact()`` makes the mask permanent by keeping only the dynamic
entries of the K kernels (``dynamic_values`` (K, nnz)), which shrinks parameters, gradients and
optimizer state from (K + 1) N to K nnz + N. W_s stays a dense kernel (zero at the dynamic entries,
which get no gradient) because every forward needs it dense: keeping only its N - nnz used entries
would cost a scatter of them per forward, more than DY-Conv's whole kernel aggregation at batch 1.
(The deployed form, whose W_s never changes, stores N - nnz values and densifies once at load.)

Granularity (docs/method.md#granularity): ``"element"`` (the paper) lets every entry of the mask be chosen on its
own; ``"channel"`` keeps the mask constant along every row of the kernel (an output channel of a conv,
an output row of an expert weight), so the layer can compute the static rows once for the whole batch
and the dynamic path on the kappa rows only. The mask keeps its shape and meaning (an element mask with
whole rows set); the partition ranks the layer's units (``num_units``, ``unit_scores``,
``mask_from_units``), so it needs no knowledge of the granularity.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Protocol, get_args

import torch
from torch import nn

from ..errors import UsageError
from ._mixin import ModuleMixin
from ._validate import check_choice

LambdaMode = Literal["both", "static", "dynamic", "none"]
LAMBDA_MODES = get_args(LambdaMode)
Granularity = Literal["element", "channel"]
GRANULARITIES = get_args(Granularity)


def dense_dynamic_kernels(values: torch.Tensor, index: torch.Tensor, numel: int) -> torch.Tensor:
    """The (K, nnz) dynamic ``values`` written at flat positions ``index`` of K zero kernels: (K, numel)."""
    wide_index = index.unsqueeze(0).expand(values.shape[0], -1)
    return values.new_zeros(values.shape[0], numel).scatter(1, wide_index, values)


def all_positions(numel: int) -> torch.Tensor:
    """``torch.arange(numel)`` on the default device; on the meta device, where a tensor holds no values, an
    empty tensor of its size, because torch's meta ``arange`` is a Python registration whose first call
    imports sympy (0.8 s of every ``padnet predict``, which builds the model on meta first)."""
    if torch.get_default_device().type == "meta":
        return torch.empty(numel, dtype=torch.long)
    return torch.arange(numel)


class Upcyclable(Protocol):
    """A training-form dynamic layer (DY-Conv, MoE, or their PAD forms): its full kernels and bias."""

    @property
    def weight(self) -> torch.Tensor: ...

    @property
    def bias(self) -> torch.Tensor | None: ...


@torch.no_grad()
def upcycle_from(layer: Upcyclable, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Set every kernel (or expert) of a dynamic ``layer`` to ``weight``, a PAD layer's W_s too, and
    every kernel's bias to ``bias``: with mixing weights that sum to 1 the layer then computes what the
    static layer holding ``weight`` and ``bias`` did (upcycling). ``layer`` is a training form (it has
    the full ``weight``), built with a bias exactly when ``bias`` is given."""
    layer.weight.copy_(weight.reshape(1, *layer.weight.shape[1:]).expand_as(layer.weight))
    if isinstance(layer, PartiallyDynamic):
        layer.static_weight.copy_(weight.reshape(layer.static_weight.shape))
    if bias is not None:
        assert layer.bias is not None  # built with bias=True (from_conv, from_linear)
        layer.bias.copy_(bias.reshape(1, -1).expand_as(layer.bias))


class DeployedForm(Protocol):
    """What a PAD layer's ``deployed_form`` is: a class whose ``from_pad(layer)`` builds the layer's
    inference form."""

    def from_pad(self, layer: Any, /) -> nn.Module: ...


class DynamicEntries(ModuleMixin):
    """Counts shared by the training and deployed PAD forms: both keep ``kernel_shape``, a sorted
    ``dynamic_index`` of the dynamic entries' flat positions and their ``granularity``."""

    kernel_shape: tuple[int, ...]
    dynamic_index: torch.Tensor
    granularity: str = "element"

    @property
    def kernel_numel(self) -> int:
        return math.prod(self.kernel_shape)

    @property
    def num_dynamic(self) -> int:
        return int(self.dynamic_index.numel())

    @property
    def dynamic_ratio(self) -> float:
        """kappa = mean(M): the fraction of one kernel's entries that are dynamic."""
        return self.num_dynamic / self.kernel_numel

    # ----------------------------------------------------------------- units (docs/method.md#granularity)
    @property
    def row_numel(self) -> int:
        """Entries of one row (an output channel of a conv kernel, an output row of an expert weight)."""
        return self.kernel_numel // self.kernel_shape[0]

    @property
    def num_units(self) -> int:
        """What the partition ranks in this layer: entries, or rows for ``granularity="channel"``."""
        return self.kernel_numel if self.granularity == "element" else self.kernel_shape[0]

    def unit_scores(self, entry_scores: torch.Tensor) -> torch.Tensor:
        """Per-entry scores (N,) summed into per-unit scores (``num_units``,): the identity for elements,
        the sum over every row for channels (the signed element terms of a row are summed:
        docs/method.md#granularity)."""
        flat = entry_scores.reshape(-1)
        return flat if self.granularity == "element" else flat.reshape(self.kernel_shape[0], -1).sum(1)

    def mask_from_units(self, units: torch.Tensor) -> torch.Tensor:
        """The element mask (kernel shape) of a bool mask over the units (whole rows for channels)."""
        units = units.reshape(-1)
        if self.granularity == "element":
            return units.reshape(self.kernel_shape)
        return units.unsqueeze(1).expand(-1, self.row_numel).reshape(self.kernel_shape)

    def dynamic_units(self) -> torch.Tensor:
        """Which units are dynamic now, a bool tensor (``num_units``,)."""
        flat = torch.zeros(self.kernel_numel, dtype=torch.bool, device=self.dynamic_index.device)
        flat[self.dynamic_index] = True
        return flat if self.granularity == "element" else flat.reshape(self.kernel_shape[0], -1)[:, 0].clone()

    def row_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(dynamic rows, static rows), sorted row indices of a channel-granular layer; derived from
        ``dynamic_index`` when asked (C_out-sized work, nothing cached that ``.to()`` could leave behind).
        Both lengths follow from the index's length, not its values: sorting puts the static rows first, in
        order, where ``nonzero`` would give a data-dependent shape that ``torch.export`` and
        ``torch.compile(fullgraph=True)`` cannot hold (and meta tensors cannot compute). The sort keys are
        unique (row index, plus C_out for a dynamic row), so any sort gives the one order: ONNX has no
        stable sort."""
        rows = self.dynamic_index[:: self.row_numel] // self.row_numel
        out_rows = self.kernel_shape[0]
        dynamic = torch.full((rows.numel(),), out_rows, dtype=torch.long, device=rows.device)
        keys = torch.arange(out_rows, device=rows.device).index_add_(0, rows, dynamic)
        return rows, torch.argsort(keys)[: out_rows - rows.numel()]

    @property
    def structured_static_numel(self) -> int:
        """Entries computed once for the whole batch (static rows): (1 - kappa) N for channels, else 0."""
        return self.kernel_numel - self.num_dynamic if self.granularity == "channel" else 0


def check_rows(mask: torch.Tensor, granularity: str) -> None:
    """A channel-granular mask must be constant along every row; raise naming the first mixed rows."""
    if granularity != "channel":
        return
    rows = mask.reshape(mask.shape[0], -1)
    mixed = (rows.any(1) & ~rows.all(1)).nonzero().squeeze(1)
    if mixed.numel():
        raise UsageError(f"granularity='channel' needs a mask constant along every row (output channel); rows "
                         f"{mixed[:5].tolist()} mix dynamic and static entries")


class PartiallyDynamic(DynamicEntries):
    """Mixin for ``nn.Module`` subclasses; call ``_init_pad`` after the dynamic ``weight`` exists."""

    kernel_shape: tuple[int, ...]
    lambda_mode: str
    compacted: bool
    # Parameters and buffers (``_init_pad``): the K full kernels (until ``compact()``, then their dynamic
    # entries ``dynamic_values``), W_s, the scale parameter phi, the mask and the static keep mask.
    weight: torch.Tensor
    dynamic_values: torch.Tensor
    static_weight: torch.Tensor
    phi: torch.Tensor
    mask: torch.Tensor
    static_keep: torch.Tensor
    # The inference form (``DeployedPADConv2d`` for ``PADConv2d``, ...): set by that form's module, so a
    # new layer kind registers its deployed form beside it and ``padnet.deploy`` needs no change.
    deployed_form: DeployedForm | None = None

    def to_deployed(self) -> nn.Module:
        """The inference form of this layer (its ``deployed_form.from_pad``): the same outputs in eval
        mode, storing only the static entries, the K x nnz dynamic entries and an index list."""
        if self.deployed_form is None:
            raise NotImplementedError(f"{type(self).__name__} has no deployed form registered")
        return self.deployed_form.from_pad(self)

    @property
    def kind(self) -> str:
        return type(self).__name__

    def _init_pad(self, kernel_shape: tuple[int, ...], lambda_mode: str, granularity: str = "element") -> None:
        check_choice("lambda_mode", lambda_mode, LAMBDA_MODES)
        check_choice("granularity", granularity, GRANULARITIES)
        self.lambda_mode = lambda_mode
        self.granularity = granularity
        self.kernel_shape = tuple(kernel_shape)
        self.compacted = False
        self.static_weight = nn.Parameter(torch.empty(self.kernel_shape))
        # phi is unused in mode "none"; it stays a (frozen) parameter so state dicts keep one layout.
        self.phi = nn.Parameter(torch.zeros(()), requires_grad=lambda_mode != "none")
        self.register_buffer("mask", torch.ones(self.kernel_shape, dtype=torch.bool))
        self.register_buffer("dynamic_index", all_positions(self.kernel_numel), persistent=False)
        # 1 - M as uint8, flattened: zeroes the static gradient at the dynamic entries in one multiply.
        self.register_buffer("static_keep", torch.zeros(self.kernel_numel, dtype=torch.uint8), persistent=False)
        # Set by the partition while it scores: a float copy of the mask that carries gradient.
        self.relaxed_mask: torch.Tensor | None = None

    # ----------------------------------------------------------------- mask and scales
    @property
    def scales(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(lambda_s, lambda_d) as docs/method.md#pad-layers defines them for ``lambda_mode``."""
        one = torch.ones((), dtype=self.phi.dtype, device=self.phi.device)
        two_sigmoid = 2 * torch.sigmoid(self.phi)
        if self.lambda_mode == "both":
            return 2 - two_sigmoid, two_sigmoid
        if self.lambda_mode == "static":
            return 2 - two_sigmoid, one
        if self.lambda_mode == "dynamic":
            return one, two_sigmoid
        return one, one

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor) -> None:
        """Set the mode mask: a bool tensor of one kernel's shape, True = dynamic entry."""
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise UsageError(f"mask must be a torch.bool tensor; got {got}")
        if tuple(mask.shape) != self.kernel_shape:
            raise UsageError(f"mask shape {tuple(mask.shape)} does not match the kernel shape {self.kernel_shape}")
        check_rows(mask, self.granularity)
        if self.compacted:
            if torch.equal(mask.to(self.mask.device), self.mask):
                return
            raise UsageError("this layer is compacted: its mask is final and cannot change")
        self.mask.copy_(mask)
        self._refresh_index()

    def set_granularity(self, granularity: str) -> None:
        """Switch between ``"element"`` and ``"channel"`` before the mask is final (not compacted); the
        current mask must fit the new granularity (a fresh layer's all-ones mask fits both)."""
        check_choice("granularity", granularity, GRANULARITIES)
        if granularity == self.granularity:
            return
        if self.compacted:
            raise UsageError("this layer is compacted: its granularity is final and cannot change")
        check_rows(self.mask, granularity)
        self.granularity = granularity

    def _refresh_index(self) -> None:
        flat = self.mask.reshape(-1)
        self.dynamic_index = flat.nonzero().squeeze(1)
        self.static_keep = (~flat).to(torch.uint8)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._adopt_stored_form(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._refresh_index()

    def _adopt_stored_form(self, state_dict, prefix: str) -> None:
        """Take the form of the incoming state dict, so a plain ``load_state_dict`` of a partitioned,
        compacted or deployed model's state dict into a freshly converted model works: its mask (or a
        deployed layer's index list) becomes this layer's, and the layer compacts when the state dict
        is compacted. A meta layer is left alone (``padnet.load`` sets its masks before loading)."""
        if self.mask.is_meta:
            return
        if prefix + "static_values" in state_dict and prefix + "static_weight" not in state_dict:
            _deployed_entries_as_training(self, state_dict, prefix)
        mask = state_dict.get(prefix + "mask")
        if not isinstance(mask, torch.Tensor) or mask.is_meta or mask.dtype != torch.bool \
                or tuple(mask.shape) != self.kernel_shape:
            return  # the default loader reports it
        if not self.compacted and not torch.equal(mask.to(self.mask.device), self.mask):
            self.set_mask(mask.to(self.mask.device))
        if not self.compacted and prefix + "dynamic_values" in state_dict and prefix + "weight" not in state_dict:
            self.compact()

    @property
    def static_index(self) -> torch.Tensor:
        """Flat positions of the static entries, sorted. Computed when asked (no forward needs it): kept
        as an int64 buffer it would take 8 bytes per static entry, twice the static values themselves.
        The complement of ``dynamic_index`` rather than read from the mask: a layer that ``padnet.load``
        builds on the meta device has a meta mask but the file's real index list, and is deployed there."""
        is_static = torch.ones(self.kernel_numel, dtype=torch.bool, device=self.dynamic_index.device)
        is_static[self.dynamic_index] = False
        return is_static.nonzero().squeeze(1)

    # ----------------------------------------------------------------- stored entries
    def dynamic_entries(self) -> torch.Tensor:
        """The dynamic entries of all K kernels, (K, nnz), in mask order."""
        if self.compacted:
            return self.dynamic_values
        return self.weight.reshape(self.weight.shape[0], -1).index_select(1, self.dynamic_index)

    def folded_entries(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What a deployed form stores, the scales folded in: lambda_s times W_s at the static entries
        (N - nnz, in position order) and lambda_d times the dynamic entries (K, nnz)."""
        dynamic = self.dynamic_entries()
        lambda_s, lambda_d = self.scales
        static = self.static_weight.reshape(-1).index_select(0, self.static_index.to(dynamic.device))
        return lambda_s * static, lambda_d * dynamic

    def masked_static_kernel(self, scale: torch.Tensor | None = None) -> torch.Tensor:
        """``scale`` (default 1) times (1 - M) (.) W_s, flattened to (N,): zero at the dynamic entries,
        which get no gradient. Always a new tensor the caller may write into."""
        flat = self.static_weight.reshape(-1)
        if scale is not None:
            flat = scale * flat
        return torch.where(self.mask.reshape(-1), torch.zeros((), dtype=flat.dtype, device=flat.device), flat)

    def masked_dynamic_kernels(self) -> torch.Tensor:
        """M (.) W_k for all K kernels, (K, N): zero at the static entries."""
        if self.compacted:
            return dense_dynamic_kernels(self.dynamic_values, self.dynamic_index, self.kernel_numel)
        flat = self.weight.reshape(self.weight.shape[0], -1)
        return torch.where(self.mask.reshape(1, -1), flat, torch.zeros((), dtype=flat.dtype, device=flat.device))

    @torch.no_grad()
    def static_from_dynamic(self) -> "PartiallyDynamic":
        """Set W_s at the static entries to lambda_d / lambda_s times the mean of the K dynamic kernels
        there, so a layer whose kernels were trained fully dynamic (a warm-up) changes its function as
        little as possible when the mask turns those entries static. Call it after the partition,
        before ``compact()``."""
        if self.compacted:
            raise UsageError("static_from_dynamic needs the full kernels; call it before compact()")
        lambda_s, lambda_d = self.scales
        ratio = lambda_d / lambda_s.clamp_min(1e-6)
        mean = self.weight.reshape(self.weight.shape[0], -1).mean(0)
        flat = self.static_weight.reshape(-1).clone()
        static_index = self.static_index
        flat.index_copy_(0, static_index, (ratio * mean).index_select(0, static_index).to(flat.dtype))
        self.static_weight.copy_(flat.reshape(self.static_weight.shape))
        return self

    @torch.no_grad()
    def compact(self) -> "PartiallyDynamic":
        """Make the mask permanent: keep only the dynamic entries of the K kernels; W_s stays dense with
        its dynamic entries set to 0. Outputs are unchanged; parameters (and optimizer state built
        afterwards) shrink from (K + 1) N to K nnz + N. Idempotent."""
        if self.compacted:
            return self
        dynamic = self.dynamic_entries().detach().clone()
        del self.weight
        self.dynamic_values = nn.Parameter(dynamic)
        if not self.static_weight.is_meta:  # no values to zero (and torch's meta where imports dynamo: 1.4 s)
            self.static_weight.copy_(self.masked_static_kernel().reshape(self.static_weight.shape))
        self.compacted = True
        return self

    def pad_extra_repr(self) -> str:
        return f"dynamic_ratio={self.dynamic_ratio:.3f}, lambda_mode={self.lambda_mode!r}" + (
            f", granularity={self.granularity!r}" if self.granularity != "element" else "") + (
            ", compacted=True" if self.compacted else "")



def _deployed_entries_as_training(layer: PartiallyDynamic, state_dict, prefix: str) -> None:
    """Rewrite a deployed layer's entries in ``state_dict`` (``static_values`` and ``dynamic_index``, the
    scales folded in) as the training form's: the mask, a dense W_s (zero at the dynamic entries) and
    phi = 0, at which lambda_s = lambda_d = 1 in every lambda mode, so the layer computes what the
    deployed one did. A malformed index list is left for the default loader to report."""
    index, static = state_dict.get(prefix + "dynamic_index"), state_dict[prefix + "static_values"]
    if not isinstance(index, torch.Tensor) or index.dim() != 1 or index.dtype not in (torch.int32, torch.int64):
        return
    mask = torch.zeros(layer.kernel_numel, dtype=torch.bool, device=static.device)
    try:
        mask[index.long().to(mask.device)] = True
        kernel = static.new_zeros(layer.kernel_numel)
        kernel[~mask] = static
    except (IndexError, RuntimeError):
        return
    del state_dict[prefix + "dynamic_index"], state_dict[prefix + "static_values"]
    state_dict[prefix + "mask"] = mask.reshape(layer.kernel_shape)
    state_dict[prefix + "static_weight"] = kernel.reshape(layer.static_weight.shape)
    state_dict[prefix + "phi"] = torch.zeros((), dtype=layer.phi.dtype)
