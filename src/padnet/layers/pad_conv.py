"""PAD Dynamic Convolution: W(x) = lambda_d M (.) sum_k alpha_k(x) W_k + lambda_s (1 - M) (.) W_s."""

from __future__ import annotations

import torch
from torch import nn

from .assemble import assemble_kernels
from .dynamic_conv import DynamicConv2d, append_kernel_weight
from .pad_base import PartiallyDynamic
from .rows import channel_conv


class PADConv2d(PartiallyDynamic, DynamicConv2d):
    """Partially dynamic convolution (docs/method.md#pad-layers).

    Takes DynamicConv2d's arguments plus ``lambda_mode`` and ``granularity``. Element granularity: only
    the nnz dynamic entries are aggregated per sample (``alpha @ W_dyn[:, idx]``, (B, nnz)) and written
    into the shared static kernel; no B x K x N tensor and no dense float mask exist. Channel
    granularity (docs/method.md#granularity): the static output channels are one conv for the whole batch and the
    dynamic path runs on the dynamic channels only (``padnet.layers.rows``). Biases stay fully dynamic.
    """

    def __init__(self, *args, lambda_mode: str = "both", granularity: str = "element", **kwargs):
        super().__init__(*args, **kwargs)
        self._init_pad(self.weight_shape, lambda_mode, granularity)
        # W_s is initialised independently of the kernels, with the same init (docs/method.md#pad-layers).
        nn.init.normal_(self.static_weight, 0.0, self.init_std)

    def compute(self, x: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None, strategy: str) -> torch.Tensor:
        if not self.computes_by_rows():
            return super().compute(x, alpha, bias, strategy)
        lambda_s, lambda_d = self.scales
        rows = self.row_split()
        static = self.static_weight.reshape(self.out_channels, -1).index_select(0, rows[1]).mul(lambda_s)
        return channel_conv(self, x, rows, static, self.dynamic_row_kernels(rows[0]), lambda_d * alpha, bias, strategy)

    def computes_by_rows(self) -> bool:
        """Channel granularity with a hard mask; while the partition scores (``relaxed_mask`` set) every
        granularity computes the dense element form, which has no ``WHOLE``."""
        return self.granularity == "channel" and self.relaxed_mask is None

    def dynamic_row_kernels(self, dynamic_rows: torch.Tensor) -> torch.Tensor:
        """The dynamic rows of the K kernels, (K, n_d R): stored as such once compacted, a row gather
        (contiguous rows, faster than the entry gather) before."""
        if self.compacted:
            return self.dynamic_values
        rows = self.weight.reshape(self.num_kernels, self.out_channels, -1).index_select(1, dynamic_rows)
        return rows.reshape(self.num_kernels, -1)

    def per_sample_kernels(self, alpha: torch.Tensor) -> torch.Tensor:
        lambda_s, lambda_d = self.scales
        if self.relaxed_mask is not None:
            # Scoring only (partition): the mask is a float that carries gradient, so the dense form
            # lambda_s W_s + m (lambda_d W(x) - lambda_s W_s), whose dL/dm is the Taylor term of
            # docs/method.md#partition, computed as (1 - m) lambda_s W_s + alpha @ (m lambda_d W_k): m
            # is per entry, so it scales the K kernels instead of the B per-sample ones, and the (B, N)
            # kernels are one addmm, not five passes (the passes measured 29 % of a partition of resnet18).
            m = self.relaxed_mask.reshape(-1)
            static = lambda_s * self.static_weight.reshape(-1)
            dynamic = m * (lambda_d * self.weight)
            return torch.addmm((1 - m) * static, alpha.to(dynamic.dtype), dynamic)
        # lambda_d scales the (B, K) attention, not the (B, nnz) aggregate; lambda_s is applied while
        # copying W_s per sample: the fewest passes over memory.
        return assemble_kernels(self.static_weight.reshape(-1), (lambda_d * alpha) @ self.dynamic_entries(),
                                self.dynamic_index, scale=lambda_s, keep=self.static_keep)

    def mixture_kernels(self, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Kernels whose alpha-mixture is W(x) (docs/method.md#pad-layers). Softmax routing (alpha sums to 1):
        the static part folds into the K kernels, W~_k = lambda_d M W_k + lambda_s (1 - M) W_s, assembled
        once per forward (K x N element work, no more kernels than DY-Conv). Sigmoid routing (CondConv):
        K kernels lambda_d M W_k plus lambda_s (1 - M) W_s as a (K + 1)-th kernel of weight 1."""
        lambda_s, lambda_d = self.scales
        if self.relaxed_mask is not None:
            # Scoring: the same forms with the float mask m, so dL/dm is the Taylor term of docs/method.md#partition.
            m = self.relaxed_mask.reshape(1, -1)
            static = lambda_s * self.static_weight.reshape(1, -1)
            if self.routing == "softmax":
                return static + m * (lambda_d * self.weight - static), alpha
            stack = torch.cat([m * (lambda_d * self.weight), (1 - m) * static])
            return stack, append_kernel_weight(alpha, 1.0)
        # lambda_d scales the (B, K) weights instead of the (K, nnz) entries, and the static part by
        # lambda_s / lambda_d (lambda_d = 2 sigmoid(phi) > 0): no extra pass over the kernels.
        weights = lambda_d * alpha
        if self.routing == "softmax":
            stack = assemble_kernels(self.static_weight.reshape(-1), self.dynamic_entries(), self.dynamic_index,
                                     scale=lambda_s / lambda_d, keep=self.static_keep)
            return stack, weights
        stack = torch.cat([self.masked_dynamic_kernels(), self.masked_static_kernel(lambda_s / lambda_d).unsqueeze(0)])
        return stack, append_kernel_weight(weights, lambda_d)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.pad_extra_repr()}"
