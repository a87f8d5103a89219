"""The 1-D SGConv kernel: a few multi-scale sub-kernels with decaying weights, two-sided.

Li et al. 2022, "What Makes Convolutional Models Great on Long Sequence Modeling?" (SGConv).
For one axis and one channel:

* ``n_scales = max(1, 1 + ceil(log2(l_max / kernel_dim)))`` sub-kernels of ``kernel_dim`` (d) values;
* sub-kernel i is stretched by linear interpolation to ``d * 2**max(0, i - 1)`` taps (d, d, 2d, 4d, ...)
  and scaled by ``decay**i``, so farther taps get smaller weights;
* the stretched sub-kernels are concatenated (at least ``l_max`` taps) and cut to ``l_max``;
* the result is divided by a per-channel constant ``norm`` fixed at construction.

Images need a centred kernel, so each channel has two such kernels: one for offsets >= 0 and one for
offsets <= 0 (both include offset 0; the centre tap is their sum). Everything is linear in the
parameters, so the centred kernel is one matrix product, ``weight @ basis``, with a fixed basis.

Support: taps at ``|offset| >= l_max`` are zero. An axis longer than ``l_max`` is still convolved
exactly, but each output only sees inputs less than ``l_max`` pixels away.

Normalization: at construction every channel's centred kernel (``2 * l_max - 1`` taps) has unit L2
norm; ``norm`` is a persistent buffer so a checkpoint restores the exact function.
"""
import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ['SGKernel1d', 'num_scales']


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f'{name} must be a positive int, got {value!r} ({type(value).__name__})')
    if value < 1:
        raise ValueError(f'{name} must be a positive int, got {value}')
    return value


def num_scales(l_max: int, kernel_dim: int) -> int:
    """Number of sub-kernels needed so that d, d, 2d, 4d, ... covers ``l_max`` taps."""
    return max(1, 1 + math.ceil(math.log2(l_max / kernel_dim)))


def _one_sided_basis(l_max: int, kernel_dim: int, decay: float) -> torch.Tensor:
    """(n_scales * kernel_dim, l_max) float64 matrix: stretch, decay, concatenate, cut."""
    n = num_scales(l_max, kernel_dim)
    eye = torch.eye(kernel_dim, dtype=torch.float64).unsqueeze(1)  # (d, 1, d): one sub-kernel per unit vector
    blocks = []
    for i in range(n):
        stretched = F.interpolate(eye, scale_factor=2 ** max(0, i - 1), mode='linear', align_corners=False)
        blocks.append(stretched.squeeze(1) * decay ** i)  # (d, d * 2**max(0, i-1))
    width = sum(b.shape[1] for b in blocks)
    basis = torch.zeros(n * kernel_dim, width, dtype=torch.float64)
    col = 0
    for i, block in enumerate(blocks):
        basis[i * kernel_dim:(i + 1) * kernel_dim, col:col + block.shape[1]] = block
        col += block.shape[1]
    return basis[:, :l_max]


class SGKernel1d(nn.Module):
    """Two-sided multi-scale decaying kernel for one axis, one per channel.

    Args:
        channels: number of channels C (one kernel each).
        l_max: taps per side; offsets ``-(l_max-1) .. l_max-1`` are covered.
        kernel_dim: learned values per sub-kernel (d).
        decay: weight of sub-kernel i is ``decay**i``; in (0, 1].

    Parameters:
        weight: (C, 2, n_scales, kernel_dim); side 0 holds offsets >= 0, side 1 offsets <= 0.

    Forward:
        ``kernel(length)`` -> (C, 2 * length - 1) centred kernel, offset 0 at index ``length - 1``.
    """

    def __init__(
            self,
            channels: int,
            l_max: int,
            kernel_dim: int = 8,
            decay: float = 0.5,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.channels = _positive_int('channels', channels)
        self.l_max = _positive_int('l_max', l_max)
        self.kernel_dim = _positive_int('kernel_dim', kernel_dim)
        if isinstance(decay, bool) or not isinstance(decay, (int, float)):
            raise TypeError(f'decay must be a float in (0, 1], got {decay!r} ({type(decay).__name__})')
        if not 0.0 < decay <= 1.0:
            raise ValueError(f'decay must be in (0, 1], got {decay}')
        self.decay = float(decay)
        self.n_scales = num_scales(l_max, kernel_dim)

        self.weight = nn.Parameter(torch.empty(channels, 2, self.n_scales, kernel_dim, **dd))
        self.register_buffer('basis', torch.empty(2 * self.n_scales * kernel_dim, 2 * l_max - 1, **dd),
                             persistent=False)
        self.register_buffer('norm', torch.ones(channels, **dd))
        self.reset_parameters()

    @torch.no_grad()
    def init_non_persistent_buffers(self) -> None:
        """Build ``basis`` in the weight's dtype (timm calls this after ``to_empty`` from the meta device)."""
        if not self.basis.is_meta:
            self.basis.copy_(self._centred_basis())

    def _apply(self, fn, *args, **kwargs):
        # A cast (e.g. .double()) would round the float32 basis; rebuild it exactly in the new dtype.
        module = super()._apply(fn, *args, **kwargs)
        self.init_non_persistent_buffers()
        return module

    def _centred_basis(self) -> torch.Tensor:
        """(2 * n_scales * kernel_dim, 2 * l_max - 1): side 0 fills offsets >= 0, side 1 offsets <= 0."""
        one_sided = _one_sided_basis(self.l_max, self.kernel_dim, self.decay)
        rows = one_sided.shape[0]
        centred = torch.zeros(2 * rows, 2 * self.l_max - 1, dtype=torch.float64)
        centred[:rows, self.l_max - 1:] = one_sided
        centred[rows:, :self.l_max] = one_sided.flip(-1)
        return centred.to(device=self.basis.device, dtype=self.basis.dtype)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random sub-kernels, then fix ``norm`` so every channel's kernel has unit L2 norm."""
        if self.weight.is_meta:
            return
        self.init_non_persistent_buffers()
        nn.init.normal_(self.weight)
        self.norm.fill_(1.0)
        self.norm.copy_(self.kernel(self.l_max).norm(dim=-1).clamp_min(torch.finfo(self.norm.dtype).tiny))

    def scale_bounds(self) -> List[Tuple[int, int]]:
        """[(first, last + 1)] offsets covered by each sub-kernel, cut to ``l_max``."""
        bounds, start = [], 0
        for i in range(self.n_scales):
            stop = min(start + self.kernel_dim * 2 ** max(0, i - 1), self.l_max)
            bounds.append((start, stop))
            start = stop
        return bounds

    def kernel(self, length: Optional[int] = None) -> torch.Tensor:
        """Centred kernel (C, 2 * length - 1) for an axis of ``length`` samples (default ``l_max``)."""
        length = self.l_max if length is None else _positive_int('length', length)
        k = self.weight.flatten(1) @ self.basis  # (C, 2 * l_max - 1)
        k = k / self.norm.unsqueeze(-1)
        if length <= self.l_max:
            return k[:, self.l_max - length:self.l_max + length - 1]
        pad = length - self.l_max
        return F.pad(k, (pad, pad))

    def forward(self, length: Optional[int] = None) -> torch.Tensor:
        return self.kernel(length)

    def extra_repr(self) -> str:
        return (f'{self.channels}, l_max={self.l_max}, kernel_dim={self.kernel_dim}, '
                f'n_scales={self.n_scales}, decay={self.decay}')
