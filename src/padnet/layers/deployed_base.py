"""Storage shared by the deployed (inference) forms of PAD layers.

A deployed layer stores, per docs/method.md#storage, only: the N - nnz static entries with lambda_s folded in
(``static_values``), the K x nnz dynamic entries with lambda_d folded in (``dynamic_values``) and the
sorted flat positions of the dynamic entries (``dynamic_index``, an index list instead of a mask).

In memory the static entries live only in a dense static kernel (``static_kernel``, zeros at the
dynamic positions): each forward builds a sample's kernel with one copy of it plus one scatter of nnz
values. A state-dict hook writes its N - nnz static entries to files as ``static_values`` (and the
index list as int32), and loading scatters them back, so a file holds exactly the stored entries while
memory holds no second copy of them and no list of the static positions.

Channel granularity (docs/method.md#granularity): the static entries are whole rows, so memory holds them compact,
(1 - kappa) C_out rows in order (``static_kernel`` is then the static conv's weight or the static
matmul's, with no zeros), and files hold the sorted dynamic rows (``dynamic_rows``, int32) instead of
the entries' positions.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import UsageError
from ._validate import check_choice
from .pad_base import GRANULARITIES, DynamicEntries, PartiallyDynamic, all_positions


class DeployedPartiallyDynamic(DynamicEntries):
    """Mixin for ``nn.Module`` subclasses; call ``_init_deployed`` in ``__init__``."""

    kernel_shape: tuple[int, ...]
    # Set by ``_init_deployed``: the (K, nnz) dynamic entries and the static kernel (dense, or the
    # static rows for channel granularity), lambdas folded in.
    dynamic_values: torch.Tensor
    static_kernel: torch.Tensor

    def _init_deployed(self, kernel_shape, num_kernels: int, dynamic_index: torch.Tensor | None,
                       granularity: str = "element") -> None:
        check_choice("granularity", granularity, GRANULARITIES)
        self.granularity = granularity
        self.kernel_shape = tuple(kernel_shape)
        numel = math.prod(self.kernel_shape)
        if dynamic_index is None:
            dynamic_index = all_positions(numel)
        dynamic_index = self._check_index(dynamic_index, numel)
        nnz = dynamic_index.numel()
        self.dynamic_values = nn.Parameter(torch.zeros(num_kernels, nnz), requires_grad=False)
        self.register_buffer("dynamic_index", dynamic_index.clone())
        static_numel = numel - nnz if granularity == "channel" else numel
        self.register_buffer("static_kernel", torch.zeros(static_numel), persistent=False)
        register = getattr(self, "register_state_dict_post_hook", None) or self._register_state_dict_hook
        register(_save_static_values_and_int32_index)

    @staticmethod
    def _check_index(index: torch.Tensor, numel: int) -> torch.Tensor:
        if not isinstance(index, torch.Tensor) or index.dim() != 1 or index.dtype != torch.long:
            raise UsageError("dynamic_index must be a 1-D torch.long tensor of flat kernel positions")
        if index.is_meta:  # no values to check (a layer built on the meta device)
            return index
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= numel):
            raise UsageError(f"dynamic_index holds positions outside [0, {numel}) for kernel size {numel}")
        if index.numel() > 1 and not bool((index[1:] > index[:-1]).all()):
            raise UsageError("dynamic_index must be strictly increasing (sorted, no repeats)")
        return index

    @property
    def num_static(self) -> int:
        return self.kernel_numel - self.num_dynamic

    def _is_static(self) -> torch.Tensor:
        is_static = torch.ones(self.kernel_numel, dtype=torch.bool, device=self.static_kernel.device)
        is_static[self.dynamic_index.to(is_static.device)] = False
        return is_static

    @property
    def static_values(self) -> torch.Tensor:
        """The N - nnz static entries in position order, lambda_s folded in (a copy): what files store.
        Boolean indexing walks the positions in order; channel granularity holds them so already."""
        if self.granularity == "channel":
            return self.static_kernel.clone()
        return self.static_kernel[self._is_static()]

    @torch.no_grad()
    def _set_static(self, values: torch.Tensor) -> None:
        if values.dim() != 1 or values.numel() != self.num_static:
            raise UsageError(f"static_values must be 1-D with N - nnz = {self.kernel_numel} - {self.num_dynamic} = "
                             f"{self.num_static} entries; got shape {tuple(values.shape)}")
        if self.granularity == "channel":
            self.static_kernel = values.to(self.dynamic_values).clone()
            return
        kernel = self.dynamic_values.new_zeros(self.kernel_numel)
        kernel[self._is_static().to(kernel.device)] = values.to(kernel)
        self.static_kernel = kernel

    @torch.no_grad()
    def take_entries(self, layer: PartiallyDynamic) -> None:
        """Take the PAD layer ``layer``'s device, dtype and entries, its scales folded in
        (``folded_entries``). On the meta device there are no values to take (and torch's meta kernels
        for that arithmetic import torch._dynamo: 1.4 s of every ``padnet predict``)."""
        dynamic = layer.dynamic_entries()
        self.to(device=dynamic.device, dtype=dynamic.dtype)
        if not dynamic.is_meta:
            self.load_folded(*layer.folded_entries())

    @torch.no_grad()
    def load_folded(self, static_values: torch.Tensor, dynamic_values: torch.Tensor) -> None:
        """Set the stored entries (lambdas already folded in): the dynamic values, and the static ones
        into the dense static kernel."""
        self.dynamic_values.copy_(dynamic_values)
        self._set_static(static_values)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        # A file may hold another index list (another mask) than this layer was built with: adopt its
        # size so a strict load of a deployed model needs no mask up front.
        # Not a parameter: taken out before the default loader, which would call it unexpected.
        static = state_dict.pop(prefix + "static_values", None)
        self._rows_to_index(state_dict, prefix, errors)
        index = state_dict.get(prefix + "dynamic_index")
        if isinstance(index, torch.Tensor) and index.dtype == torch.int32:
            index = state_dict[prefix + "dynamic_index"] = index.long()  # files hold int32 (see below)
        if isinstance(index, torch.Tensor) and index.dim() == 1 and index.numel() != self.num_dynamic:
            device = self.dynamic_index.device
            nnz = index.numel()
            self.dynamic_index = torch.zeros(nnz, dtype=torch.long, device=device)
            dtype = self.static_values.dtype
            self.dynamic_values = nn.Parameter(
                torch.zeros(self.dynamic_values.shape[0], nnz, dtype=dtype, device=device), requires_grad=False
            )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)
        if isinstance(index, torch.Tensor):
            try:
                self._check_index(self.dynamic_index, self.kernel_numel)
            except ValueError as exc:
                errors.append(f"{prefix}dynamic_index: {exc}")
                return
        if static is None:
            if strict:
                missing.append(prefix + "static_values")
            return
        try:
            self._set_static(static)
        except ValueError as exc:
            errors.append(f"{prefix}static_values: {exc}")

    def _rows_to_index(self, state_dict, prefix, errors) -> None:
        """A channel-granular file's ``dynamic_rows`` as the entries' ``dynamic_index`` (whole rows)."""
        rows = state_dict.pop(prefix + "dynamic_rows", None)
        if rows is None or self.granularity != "channel":
            if rows is not None:
                errors.append(f"{prefix}dynamic_rows: this layer has granularity {self.granularity!r}, not 'channel'")
            return
        if not isinstance(rows, torch.Tensor) or rows.dim() != 1 or rows.dtype not in (torch.int32, torch.int64):
            errors.append(f"{prefix}dynamic_rows: must be a 1-D integer tensor of row indices")
            return
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= self.kernel_shape[0]):
            errors.append(f"{prefix}dynamic_rows: holds rows outside [0, {self.kernel_shape[0]})")
            return
        width = self.row_numel
        offsets = torch.arange(width, device=rows.device)
        state_dict[prefix + "dynamic_index"] = (rows.long().unsqueeze(1) * width + offsets).reshape(-1)

    def file_tensors(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """What a file holds for this layer beside its parameters: name -> (shape, dtype) (the state-dict
        hook's output, known without running it)."""
        index = ("dynamic_rows", (self.num_dynamic // self.row_numel,)) if self.granularity == "channel" else (
            "dynamic_index", (self.num_dynamic,))
        return {"static_values": ((self.num_static,), self.dynamic_values.dtype), index[0]: (index[1], torch.int32)}

    def deployed_extra_repr(self) -> str:
        stored = f"{self.num_static}+{tuple(self.dynamic_values.shape)}"
        return f"dynamic_ratio={self.dynamic_ratio:.3f}, stored={stored}" + (
            f", granularity={self.granularity!r}" if self.granularity != "element" else "")


def _save_static_values_and_int32_index(module, state_dict, prefix, local_metadata) -> None:
    """Files hold the N - nnz static entries (``static_values``) and the index list as int32: half the
    bytes of the int64 that ``scatter_`` needs at run time (e.g. 28 MB instead of 56 MB for resnet50 at
    kappa 0.3). Every kernel here has far fewer than 2^31 entries; larger ones keep int64."""
    state_dict[prefix + "static_values"] = module.static_values
    key = prefix + "dynamic_index"
    if key in state_dict and module.granularity == "channel":  # whole rows: the row index says it all
        index = state_dict.pop(key)
        state_dict[prefix + "dynamic_rows"] = (index[:: module.row_numel] // module.row_numel).to(torch.int32)
    elif key in state_dict and module.kernel_numel < 2**31:
        state_dict[key] = state_dict[key].to(torch.int32)
