"""The ``"direct"`` backend of SGConv2d: two 1-D depthwise convolutions through torch's conv library (oneDNN on CPU,
cuDNN on CUDA), and where on CPU it is not safe to run (``direct_is_safe``)."""
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ['direct_conv2d', 'direct_is_safe', 'DIRECT_MIN_CHANNELS_CPU']

# torch's CPU depthwise convolution (oneDNN) is not safe with few channels on every CPU. On a 2-core AMD EPYC with
# AVX512-BF16 (torch 2.14.1, 2026-12): bf16 channels_last depthwise convs with C = 4, 8 and 16 never returned
# (kernel (1, 15) on 32x32, and C = 8 on 40x40 and 56x56 maps; C = 1, 24, 32 ... 96 returned in 1-6 ms), and in
# float32 the weight gradient at C = 1 was wrong (relative error 1e21 on a 14x13 map; a segfault in channels_last)
# while C = 8 ... 96 were right. The boundary is not known for every CPU, so the guard is wider than what was seen:
# below this many channels "direct" runs matmul on CPU (float64 takes torch's own convolution, not oneDNN, and is
# left alone). The models have 40 channels or more (atto's stage 0) and are not affected.
DIRECT_MIN_CHANNELS_CPU = 32


def direct_is_safe(channels: int, device_type: str, dtype: str, min_channels: int = DIRECT_MIN_CHANNELS_CPU) -> bool:
    """Whether "direct" may run a depthwise conv of ``channels`` channels on ``device_type`` in compute dtype
    ``dtype`` (a ``dtype_name``); where not, SGConv2d runs matmul (``DIRECT_MIN_CHANNELS_CPU``)."""
    return device_type != 'cpu' or dtype == 'float64' or channels >= min_channels


def direct_conv2d(x: torch.Tensor, kh: torch.Tensor, kw: torch.Tensor,
                  bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Zero-padded separable convolution as two 1-D depthwise convolutions (W first, then H), plus a bias.

    x: (B, C, H, W); kh: (C, 2H-1); kw: (C, 2W-1) centred kernels; bias: (C,). Returns (B, C, H, W).
    conv2d correlates, so the kernels are flipped to convolve.
    """
    c, h, w = x.shape[1:]
    kw = kw.to(x.dtype).flip(-1).view(c, 1, 1, 2 * w - 1)
    kh = kh.to(x.dtype).flip(-1).view(c, 1, 2 * h - 1, 1)
    y = F.conv2d(x, kw, padding=(0, w - 1), groups=c)
    return F.conv2d(y, kh, None if bias is None else bias.to(x.dtype), padding=(h - 1, 0), groups=c)
