"""A probe plug-in (issue 19's pilot): DY-Conv's attention FC1 and FC2 start as in the reference code,
Kaiming normal (fan-out, ReLU gain), instead of nn.Linear's default. Not part of the library:

    PYTHONPATH=benchmarks/probes padnet train --import reference_attention_init --config ...
"""

from torch import nn

from padnet.layers import attention

_library_init = attention.KernelAttention.__init__


def _reference_init(self, *args, **kwargs):
    _library_init(self, *args, **kwargs)
    for fc in (self.fc1, self.fc2):
        nn.init.kaiming_normal_(fc.weight, mode="fan_out", nonlinearity="relu")


attention.KernelAttention.__init__ = _reference_init
