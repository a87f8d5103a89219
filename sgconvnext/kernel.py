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

Other lengths: ``resize`` (``resize.py``) says how the kernel meets an axis of another length L:
``"fixed"`` keeps each tap's pixel offset (zero at ``|offset| >= l_max``), ``"stretch"`` resamples the kernel
to span L taps per side.

Normalization: at construction every channel's centred kernel (``2 * l_max - 1`` taps) has unit L2
norm; ``norm`` is a persistent buffer so a checkpoint restores the exact function.

Geometry: ``(l_max, kernel_dim, decay)`` fix the basis and so the function of the weights. They are stored
in the persistent int64 buffer ``geometry``; loading a state dict made for another geometry rebuilds this
kernel with the checkpoint's geometry first (same Parameter object, new shape), so the loaded kernel
computes exactly what the saved one did at every length. A state dict with kernel weights but no
``geometry`` (saved before it existed) is refused: see ``sgconvnext.add_kernel_geometry``.
"""
import contextlib
import logging
import math
import struct
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .resize import DEFAULT_RESIZE, check_resize, stretch_matrix
from .runtime import is_compiling

__all__ = ['SGKernel1d', 'LOAD_MODES', 'check_load_mode', 'num_scales', 'pack_geometry', 'unpack_geometry']

_logger = logging.getLogger(__name__)

LOAD_MODES = ('saved', 'extend')  # a checkpoint of another geometry: take its geometry, or extend it into ours


def check_load_mode(value) -> str:
    if value not in LOAD_MODES:
        raise ValueError(f'sg_load must be one of {LOAD_MODES}, got {value!r}')
    return value


@torch.jit.unused
def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f'{name} must be a positive int, got {value!r} ({type(value).__name__})')
    if value < 1:
        raise ValueError(f'{name} must be a positive int, got {value}')
    return value


def num_scales(l_max: int, kernel_dim: int) -> int:
    """Number of sub-kernels needed so that d, d, 2d, 4d, ... covers ``l_max`` taps."""
    return max(1, 1 + math.ceil(math.log2(l_max / kernel_dim)))


@contextlib.contextmanager
def _untraced():
    """Ops inside are not recorded by a running torch.jit.trace (their result enters the trace as a constant)."""
    state = torch._C._get_tracing_state() if torch.jit.is_tracing() else None
    if state is not None:
        torch._C._set_tracing_state(None)
    try:
        yield
    finally:
        if state is not None:
            torch._C._set_tracing_state(state)


def pack_geometry(l_max: int, kernel_dim: int, decay: float) -> torch.Tensor:
    """int64 (3,) tensor ``[l_max, kernel_dim, bits of decay as a float64]``: exact, and no dtype cast touches it."""
    decay_bits = struct.unpack('<q', struct.pack('<d', float(decay)))[0]
    return torch.tensor([l_max, kernel_dim, decay_bits], dtype=torch.int64)


def unpack_geometry(geometry: torch.Tensor, name: str = 'geometry') -> Tuple[int, int, float]:
    """``(l_max, kernel_dim, decay)`` from ``pack_geometry``'s tensor; ValueError if it is not one."""
    if not isinstance(geometry, torch.Tensor) or geometry.dtype != torch.int64 or tuple(geometry.shape) != (3,):
        got = f'{geometry.dtype} {tuple(geometry.shape)}' if isinstance(geometry, torch.Tensor) else type(geometry).__name__
        raise ValueError(f'{name} must be an int64 tensor of shape (3,) (l_max, kernel_dim, decay bits), got {got}')
    l_max, kernel_dim, decay_bits = (int(v) for v in geometry.tolist())
    decay = struct.unpack('<d', struct.pack('<q', decay_bits))[0]
    if l_max < 1 or kernel_dim < 1 or not 0.0 < decay <= 1.0:
        raise ValueError(f'{name} holds no valid kernel geometry: l_max={l_max}, kernel_dim={kernel_dim}, '
                         f'decay={decay} (expected positive sizes and a decay in (0, 1])')
    return l_max, kernel_dim, decay


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
        l_max: taps per side the kernel is built for; offsets ``-(l_max-1) .. l_max-1``.
        kernel_dim: learned values per sub-kernel (d).
        decay: weight of sub-kernel i is ``decay**i``; in (0, 1].
        resize: size policy at other lengths, ``"fixed"`` or ``"stretch"`` (``resize.py``).

    Parameters:
        weight: (C, 2, n_scales, kernel_dim); side 0 holds offsets >= 0, side 1 offsets <= 0.

    Forward:
        ``kernel(length)`` -> (C, 2 * length - 1) centred kernel, offset 0 at index ``length - 1``.
    """
    # eager-only bookkeeping, not part of the function
    __jit_ignored_attributes__ = ['_stretched', 'geometry_change', 'load_mode']

    def __init__(
            self,
            channels: int,
            l_max: int,
            kernel_dim: int = 8,
            decay: float = 0.5,
            resize: str = DEFAULT_RESIZE,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.channels = _positive_int('channels', channels)
        _positive_int('l_max', l_max)
        _positive_int('kernel_dim', kernel_dim)
        if isinstance(decay, bool) or not isinstance(decay, (int, float)):
            raise TypeError(f'decay must be a float in (0, 1], got {decay!r} ({type(decay).__name__})')
        if not 0.0 < decay <= 1.0:
            raise ValueError(f'decay must be in (0, 1], got {decay}')
        self.resize = check_resize(resize)
        self.load_mode = 'saved'  # what loading a checkpoint of another geometry does (module docstring)
        self.geometry_change: Optional[Tuple[str, tuple, tuple]] = None  # last load's ('took'|'extended', saved, built)
        self._stretched: Dict[int, torch.Tensor] = {}  # length -> basis @ stretch_matrix(l_max, length)
        self._set_geometry(l_max, kernel_dim, float(decay))
        self.weight = nn.Parameter(torch.empty(channels, 2, self.n_scales, kernel_dim, **dd))
        self.register_buffer('basis', torch.empty(2 * self.n_scales * kernel_dim, 2 * l_max - 1, **dd),
                             persistent=False)
        self.register_buffer('norm', torch.ones(channels, **dd))
        self.register_buffer('geometry', torch.empty(3, dtype=torch.int64, device=device))
        self.reset_parameters()

    def _set_geometry(self, l_max: int, kernel_dim: int, decay: float) -> None:
        self.l_max, self.kernel_dim, self.decay = l_max, kernel_dim, decay
        self.n_scales = num_scales(l_max, kernel_dim)
        self._stretched.clear()

    @torch.no_grad()
    def init_non_persistent_buffers(self) -> None:
        """Build ``basis`` in the weight's dtype and record ``geometry`` (timm calls this after ``to_empty``)."""
        self._stretched.clear()
        if not self.basis.is_meta:
            self.basis.copy_(self._centred_basis())
        if not self.geometry.is_meta:
            self.geometry.copy_(pack_geometry(self.l_max, self.kernel_dim, self.decay))

    def _apply(self, fn, *args, **kwargs):
        # A cast (e.g. .double()) would round the float32 basis; rebuild it exactly in the new dtype.
        module = super()._apply(fn, *args, **kwargs)
        self.init_non_persistent_buffers()
        return module

    def _centred_basis(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """(2 * n_scales * kernel_dim, 2 * l_max - 1): side 0 fills offsets >= 0, side 1 offsets <= 0."""
        one_sided = _one_sided_basis(self.l_max, self.kernel_dim, self.decay)
        rows = one_sided.shape[0]
        centred = torch.zeros(2 * rows, 2 * self.l_max - 1, dtype=torch.float64)
        centred[:rows, self.l_max - 1:] = one_sided
        centred[rows:, :self.l_max] = one_sided.flip(-1)
        return centred.to(device=self.basis.device, dtype=dtype or self.basis.dtype)

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

    def stretched_basis(self, length: int) -> torch.Tensor:
        """``basis @ stretch_matrix(l_max, length)``, (rows, 2 * length - 1), computed in float64 once per length."""
        # TorchScript, torch.compile and export compute it in the graph (no cache writes there; the product is small)
        if torch.jit.is_scripting() or is_compiling():
            return self.basis @ stretch_matrix(self.l_max, length, self.basis.dtype, self.basis.device)
        return self._cached_stretched_basis(length)

    @torch.jit.unused
    def _cached_stretched_basis(self, length: int) -> torch.Tensor:
        basis = self._stretched.get(length)
        if basis is None:
            with _untraced():  # a cache fill, not part of the traced forward (fvcore counts by tracing)
                s = stretch_matrix(self.l_max, length, device=self.basis.device)
                basis = (self._centred_basis(torch.float64) @ s).to(self.basis.dtype)
            self._stretched[length] = basis
        return basis

    def kernel(self, length: Optional[int] = None) -> torch.Tensor:
        """Centred kernel (C, 2 * length - 1) for an axis of ``length`` samples (default ``l_max``)."""
        if length is None:
            length = self.l_max
        elif not torch.jit.is_scripting():
            _positive_int('length', length)
        elif length < 1:
            raise ValueError('length must be a positive int, got ' + str(length))
        weight = self.weight.flatten(1)
        if length != self.l_max and self.resize == 'stretch':
            return weight @ self.stretched_basis(length) / self.norm.unsqueeze(-1)
        k = weight @ self.basis / self.norm.unsqueeze(-1)  # (C, 2 * l_max - 1)
        if length <= self.l_max:
            return k[:, self.l_max - length:self.l_max + length - 1]
        pad = length - self.l_max
        return F.pad(k, (pad, pad))

    def forward(self, length: Optional[int] = None) -> torch.Tensor:
        return self.kernel(length)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Take the checkpoint's geometry before loading, so its weights keep their function (module docstring)."""
        key = prefix + 'geometry'
        if key in state_dict:
            saved = unpack_geometry(state_dict[key], key)
            current = (self.l_max, self.kernel_dim, self.decay)
            if saved != current and self._extends(saved, state_dict.get(prefix + 'weight')):
                state_dict = self._extended(state_dict, prefix, saved)
                self.geometry_change = ('extended', saved, current)
            elif saved != current:
                if prefix + 'weight' not in state_dict:
                    raise ValueError(f'{key}: the state dict gives geometry {saved} but no {prefix}weight for it '
                                     f'(this kernel has {current}); load both or neither')
                self._rebuild(*saved)
                self.geometry_change = ('took', saved, current)
                _logger.debug(f'{prefix[:-1]}: took the checkpoint\'s geometry (l_max, kernel_dim, decay) = {saved} '
                              f'instead of {current}')
        elif prefix + 'weight' in state_dict:
            raise missing_geometry_error(key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _extends(self, saved: Tuple[int, int, float], weight) -> bool:
        """Whether a load of ``saved`` geometry extends into this one (``load_mode``, module docstring)."""
        return (self.load_mode == 'extend' and self.resize == 'fixed' and saved[0] < self.l_max
                and saved[1:] == (self.kernel_dim, self.decay) and isinstance(weight, torch.Tensor) and weight.shape[:2] == (self.channels, 2)
                and tuple(weight.shape[2:]) == (num_scales(saved[0], self.kernel_dim), self.kernel_dim))

    def _extended(self, state_dict, prefix: str, saved: Tuple[int, int, float]) -> dict:
        """This kernel's entries of ``state_dict`` with the weight padded by zero far scales, our geometry (a copy)."""
        local = {k: v for k, v in state_dict.items() if k.startswith(prefix)}
        weight = local[prefix + 'weight']
        local[prefix + 'weight'] = F.pad(weight, (0, 0, 0, self.n_scales - weight.shape[2]))
        local[prefix + 'geometry'] = pack_geometry(self.l_max, self.kernel_dim, self.decay)
        return local

    @torch.no_grad()
    def _rebuild(self, l_max: int, kernel_dim: int, decay: float) -> None:
        """Switch to another geometry in place: the weight keeps its Parameter object (optimizers, EMA see it)."""
        self._set_geometry(l_max, kernel_dim, decay)
        self.weight.data = self.weight.new_empty(self.channels, 2, self.n_scales, kernel_dim)
        self.basis = self.basis.new_empty(2 * self.n_scales * kernel_dim, 2 * l_max - 1)
        self.init_non_persistent_buffers()

    def extra_repr(self) -> str:
        return (f'{self.channels}, l_max={self.l_max}, kernel_dim={self.kernel_dim}, '
                f'n_scales={self.n_scales}, decay={self.decay}, resize={self.resize!r}')


def missing_geometry_error(key: str) -> ValueError:
    return ValueError(
        f'{key} is missing: the checkpoint has SGConv kernel weights but not the geometry they were built for '
        f'(saved by a development version of sgconvnext 0.1.0 from before the geometry was saved). Add it with sgconvnext.add_kernel_geometry(state_dict, img_size=<the img_size '
        f'the model was built with>) and save the result.')
