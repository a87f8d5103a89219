"""SGConv2d: a global depthwise convolution whose kernel is separable and multi-scale.

Channel c convolves its (H, W) map with ``K[c] = kh[c] (outer) kw[c]``, where ``kh`` and ``kw`` are the
two-sided 1-D SGConv kernels of ``kernel.py``. The convolution is linear and zero-padded ("same"
size, never circular), then a per-channel bias is added. Exact ways to compute it:

* ``"matmul"``: the zero-padded 1-D convolution along an axis is a Toeplitz product, so
  ``y = Th @ x @ Tw^T`` per channel: two batched matrix products, O(HW(H+W)) (``toeplitz.py``).
* ``"fft"``: rfft per axis to a fast length >= 2n - 1, multiply by the outer product of the two
  axis spectra (the spatial 2-D kernel is never built), invert, crop. O(HW log HW).
* ``"direct"``: two 1-D depthwise convolutions, (1, 2W-1) then (2H-1, 1), through the conv library (oneDNN /
  cuDNN, ``direct.py``); fast forward on small maps and native to channels_last, slow backward. On CPU it is not
  used below ``DIRECT_MIN_CHANNELS_CPU`` channels (``direct_is_safe``): matmul runs instead, whatever was asked.
* ``"auto"``: picks the one measured faster for the map size, the input's memory format and whether
  gradients are needed (``choose_backend``), unless the layer holds a choice timed on this device for the call
  (``tuned``, set by ``sgconvnext.tune_backends`` or a saved table; ``call_key`` names a call).
"""
import math
import warnings
from typing import Dict, Optional, Tuple, Union

import torch
from torch import nn

from .direct import DIRECT_MIN_CHANNELS_CPU, direct_conv2d, direct_is_safe
from .kernel import SGKernel1d, _positive_int
from .resize import DEFAULT_RESIZE, check_resize
from .runtime import autocast_on, exporting_onnx, is_compiling
from .toeplitz import is_channels_last, toeplitz_conv2d

__all__ = ['SGConv2d', 'BACKENDS', 'EXACT_BACKENDS', 'call_key', 'choose_backend', 'direct_conv2d', 'fast_fft_length',
           'direct_is_safe', 'fft_conv2d', 'toeplitz_conv2d']

BACKENDS = ('auto', 'fft', 'matmul', 'direct')
EXACT_BACKENDS = ('fft', 'matmul', 'direct')  # what auto chooses from

# Crossovers of "auto", measured on CPU (tools/bench_sgconv.py, docs/BENCHMARKS.md); not measured on GPU
# yet, where the same rules are used.
# * direct runs through oneDNN's depthwise conv: fast forward on channels_last input (as timm's ConvNeXt
#   blocks give it), several times slower than matmul on contiguous NCHW input, and a slow backward (the
#   conv library's depthwise weight gradient). So it is used for inference on channels_last input only,
#   where sgconvnext_tiny's inference at 224 px (maps 7 to 56) was fastest with it: image-by-image matmul
#   (toeplitz.py) was faster than direct on a lone 56x56 layer, but the whole model was 3-4 % slower with it.
#   Above 64 direct loses: on lone channels_last layers matmul took 0.4-0.6x its time at 80 to 256 (0.31x at
#   128x128x192, batch 8), a tie at 64, and sgconvnext_tiny built for 224 ran at 1024 px in 0.91x the time
#   with matmul on the 128x128 maps of stage 1 (2026-12-01, one process, docs/BENCHMARKS.md). With a dense
#   upstream gradient matmul won the forward + backward at every stage size, 7 to 56, in either layout.
# * Otherwise matmul while its cost, H*W*(H+W) multiply-adds per channel, is below FFT_COST_FACTOR times
#   n_h*n_w*log2(n_h*n_w) for the padded FFT. Matmul was faster at every square size measured, 7 to 1024
#   (2.4x faster at 1024); the factor puts the square crossover near 2800.
FFT_COST_FACTOR = 56.0
DIRECT_MAX_SIDE_INFERENCE = 64


def choose_backend(height: int, width: int, device: torch.device, needs_grad: bool = True,
                   channels_last: bool = False, direct_max_side: int = DIRECT_MAX_SIDE_INFERENCE,
                   fft_cost_factor: float = FFT_COST_FACTOR) -> str:
    """Backend ``"auto"`` runs for an (height, width) map on ``device`` (crossovers: the constants above)."""
    if channels_last and not needs_grad and max(height, width) <= direct_max_side:
        return 'direct'
    n_h, n_w = fast_fft_length(2 * height - 1), fast_fft_length(2 * width - 1)
    matmul_cost = height * width * (height + width)
    fft_cost = fft_cost_factor * n_h * n_w * math.log(max(2, n_h * n_w)) / math.log(2.0)  # log2 (TorchScript)
    return 'matmul' if matmul_cost <= fft_cost else 'fft'


def dtype_name(dtype: torch.dtype) -> str:
    """'float32', 'bfloat16', ...: the same in eager and TorchScript (where str(dtype) is a number)."""
    if dtype == torch.float32:
        return 'float32'
    if dtype == torch.bfloat16:
        return 'bfloat16'
    if dtype == torch.float16:
        return 'float16'
    if dtype == torch.float64:
        return 'float64'
    return 'other'


def call_key(height: int, width: int, channels_last: bool, dtype: str, needs_grad: bool, device_type: str,
             batch: int) -> str:
    """The name of one kind of SGConv2d call in a tuned table: map size, memory format, compute dtype (autocast's
    where it is on), training or inference, device type, batch size (matmul's path depends on it).
    ``'56x56/channels_last/float32/train/cpu/batch8'``."""
    return (str(height) + 'x' + str(width) + '/' + ('channels_last' if channels_last else 'contiguous') + '/'
            + dtype + '/' + ('train' if needs_grad else 'infer') + '/' + device_type + '/batch' + str(batch))


# A call whose map size was never tuned takes the choice of the nearest tuned map (same layout, dtype, mode, device)
# whose sides are both within this factor: detection canvases change every batch, and their maps stay this close.
TUNED_SHAPE_REACH = 2.0


def _key_size(key: str, channels_last: bool, dtype: str, needs_grad: bool, device_type: str) -> Tuple[int, int, int]:
    """(height, width, batch) of ``key`` (``call_key``'s form) if it names this kind of call, else (-1, -1, -1).
    Parsed, not built: under torch.compile the sizes may be traced as symbols that cannot become text."""
    parts = key.split('/')
    if len(parts) != 6 or parts[1] != ('channels_last' if channels_last else 'contiguous') or parts[2] != dtype:
        return -1, -1, -1
    if parts[3] != ('train' if needs_grad else 'infer') or parts[4] != device_type or not parts[5].startswith('batch'):
        return -1, -1, -1
    size = parts[0].split('x')
    return int(size[0]), int(size[1]), int(parts[5][len('batch'):])


def _shape_gap(height: int, width: int, tuned_height: int, tuned_width: int) -> float:
    """How far a tuned map is from this one: the larger side ratio (1.0: the same size)."""
    return max(max(height, tuned_height) / min(height, tuned_height), max(width, tuned_width) / min(width, tuned_width))


def fast_fft_length(n: int) -> int:
    """Smallest length >= n whose only prime factors are 2, 3, 5 and 7."""
    while not _is_7_smooth(n):
        n += 1
    return n


def _is_7_smooth(n: int) -> bool:
    for p in [2, 3, 5, 7]:
        while n % p == 0:
            n = n // p
    return n == 1


def _circular(kernel: torch.Tensor, n: int) -> torch.Tensor:
    """(C, 2L-1) centred kernel -> (C, n) with offset s at index s mod n (needs n >= 2L-1)."""
    length = (kernel.shape[-1] + 1) // 2
    positive, negative = kernel[:, length - 1:], kernel[:, :length - 1]
    gap = kernel.new_zeros(kernel.shape[0], n - kernel.shape[-1])
    return torch.cat([positive, gap, negative], dim=-1)


def fft_conv2d(x: torch.Tensor, kh: torch.Tensor, kw: torch.Tensor) -> torch.Tensor:
    """Zero-padded separable convolution by FFT, in float32 or wider.

    x: (B, C, H, W); kh: (C, 2H-1); kw: (C, 2W-1) centred kernels. Returns (B, C, H, W) of x's dtype.
    A circular convolution of length n >= 2L-1 holds every offset in -(L-1)..L-1 without wrapping
    onto another, so outputs 0..L-1 equal the linear convolution's.
    """
    # cuFFT half precision takes only powers of two and bf16 FFT does not exist: compute in float32+.
    if not torch.jit.is_scripting() and autocast_on(x.device.type):
        with torch.autocast(device_type=x.device.type, enabled=False):
            return _fft_conv2d(x, kh, kw)
    return _fft_conv2d(x, kh, kw)


def _fft_conv2d(x: torch.Tensor, kh: torch.Tensor, kw: torch.Tensor) -> torch.Tensor:
    h, w = int(x.shape[-2]), int(x.shape[-1])
    dtype = torch.promote_types(torch.promote_types(x.dtype, kh.dtype), torch.float32)
    n_h, n_w = fast_fft_length(2 * h - 1), fast_fft_length(2 * w - 1)
    spec_h = torch.fft.fft(_circular(kh.to(dtype), n_h))    # (C, n_h)
    spec_w = torch.fft.rfft(_circular(kw.to(dtype), n_w))   # (C, n_w // 2 + 1)
    spec_x = torch.fft.rfft2(x.to(dtype), s=(n_h, n_w))     # (B, C, n_h, n_w // 2 + 1)
    spec_y = spec_x * (spec_h.unsqueeze(-1) * spec_w.unsqueeze(-2))
    y = torch.fft.irfft2(spec_y, s=(n_h, n_w))[..., :h, :w]
    return y.to(x.dtype)


@torch.jit.unused
def _autocast_dtype(device_type: str) -> str:
    getter = getattr(torch, 'get_autocast_dtype', None)  # torch >= 2.4
    if getter is not None:
        return dtype_name(getter(device_type))
    return dtype_name(torch.get_autocast_gpu_dtype() if device_type == 'cuda' else torch.get_autocast_cpu_dtype())


_warned = set()  # what has been warned once in this process


@torch.jit.unused
def _warn_once(what: str, message: str) -> None:
    """One warning per process for each ``what`` ('direct', 'untuned', 'script')."""
    if what not in _warned:
        _warned.add(what)
        warnings.warn(message, stacklevel=4)


@torch.jit.unused
def _warn_untuned_call(key: str, tuned: Dict[str, str]) -> None:
    _warn_once('untuned', f'SGConv2d holds tuned backends, but none for the call {key} (it has e.g. '
               f'{next(iter(tuned))}): auto\'s rules run it. A table holds for one device type, compute dtype, layout, '
               f'train or infer and map size; moved to another device or dtype, tune again (sgconvnext.tune_backends)')


def _shape_text(x: torch.Tensor) -> str:
    return '(' + ', '.join([str(s) for s in x.shape]) + ')'


@torch.jit.unused
def _check_is_tensor(x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f'SGConv2d expects a torch.Tensor, got {type(x).__name__}')


def _pair(name: str, value) -> Tuple[int, int]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f'{name} must be an int or an (H, W) pair, got {value!r}')
        return _positive_int(f'{name}[0]', value[0]), _positive_int(f'{name}[1]', value[1])
    value = _positive_int(name, value)
    return value, value


class SGConv2d(nn.Module):
    """Global depthwise separable SGConv for (B, C, H, W) maps, a drop-in for a depthwise conv.

    Args:
        dim: channels C.
        l_max: taps per side of each axis kernel, an int or an (H, W) pair: the map size the layer is built
            for (the geometry; a loaded checkpoint brings its own, see ``kernel.py``).
        kernel_dim: learned values per sub-kernel.
        decay: weight of sub-kernel i is ``decay**i``.
        backend: ``"auto"``, ``"fft"``, ``"matmul"`` or ``"direct"``; all compute the same function.
        bias: add a learned per-channel bias.
        resize: how the kernels meet maps of another size (``resize.py``): ``"stretch"`` resamples them to span
            the map, ``"fixed"`` keeps each tap's pixel offset (zero past ``l_max``).

    Shape: (B, C, H, W) -> (B, C, H, W) for any H, W >= 1.

    TorchScript (``torch.jit.script``) compiles the same forward; there "auto" picks as in eager, "matmul" runs
    its whole-batch products (``toeplitz.py``) and the kernels follow autocast's dtype rules of the scripted ops.
    """
    __jit_unused_properties__ = ['l_max', 'resize']  # Python-side views of the kernels' settings
    tuned: Dict[str, str]  # call_key -> backend timed fastest on this device; empty: auto's rules

    def __init__(
            self,
            dim: int,
            l_max: Union[int, Tuple[int, int]],
            kernel_dim: int = 8,
            decay: float = 0.5,
            backend: str = 'auto',
            bias: bool = True,
            resize: str = DEFAULT_RESIZE,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.dim = _positive_int('dim', dim)
        l_max = _pair('l_max', l_max)
        if backend not in BACKENDS:
            raise ValueError(f'backend must be one of {BACKENDS}, got {backend!r}')
        self.backend = backend
        if backend == 'direct' and self.dim < DIRECT_MIN_CHANNELS_CPU:
            _warn_once('direct', f'SGConv2d({self.dim}, backend="direct") runs the "matmul" backend on CPU (same '
                       f'function): torch\'s CPU depthwise convolution stalls or returns wrong gradients on some CPUs '
                       f'with fewer than {DIRECT_MIN_CHANNELS_CPU} channels (sgconvnext.sgconv.DIRECT_MIN_CHANNELS_CPU)')
        self.kernel_h = SGKernel1d(dim, l_max[0], kernel_dim, decay, resize, **dd)
        self.kernel_w = SGKernel1d(dim, l_max[1], kernel_dim, decay, resize, **dd)
        self.bias = nn.Parameter(torch.zeros(dim, **dd)) if bias else None
        self.tuned = {}

    @property
    def l_max(self) -> Tuple[int, int]:
        """(H, W) map size the kernels are built for (the checkpoint's, after loading one)."""
        return self.kernel_h.l_max, self.kernel_w.l_max

    @property
    def resize(self) -> str:
        """The size policy of both axis kernels; settable."""
        return self.kernel_h.resize

    @resize.setter
    def resize(self, value: str) -> None:
        self.kernel_h.resize = self.kernel_w.resize = check_resize(value)

    def axis_kernels(self, height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Centred axis kernels ((C, 2H-1), (C, 2W-1)) in the parameters' dtype, autocast off."""
        if not torch.jit.is_scripting() and autocast_on(self.kernel_h.weight.device.type):
            with torch.autocast(device_type=self.kernel_h.weight.device.type, enabled=False):
                return self.kernel_h(height), self.kernel_w(width)
        return self.kernel_h(height), self.kernel_w(width)

    def materialize(self, height: int, width: int) -> torch.Tensor:
        """The centred 2-D kernel (C, 2H-1, 2W-1) the layer applies to an (H, W) map.

        ``layer(x) == F.conv2d(x, K.flip(-1, -2)[:, None], padding=(H-1, W-1), groups=C) + bias``.
        """
        kh, kw = self.axis_kernels(_positive_int('height', height), _positive_int('width', width))
        return kh.unsqueeze(-1) * kw.unsqueeze(-2)

    def resolve_backend(self, height: int, width: int, device: torch.device, needs_grad: bool = True,
                        channels_last: bool = False, dtype: str = 'float32', batch: int = 1) -> str:
        """The backend a forward pass on a batch of (height, width) maps runs (``dtype``: the compute dtype's name).
        "direct" becomes "matmul" where ``direct_is_safe`` says no, whether auto, a tuned table or the layer chose
        it. A tuned table's choice for this call is taken, of the nearest tuned map size within a factor
        ``TUNED_SHAPE_REACH`` on each side and then the nearest tuned batch size; a call with no tuned map that near
        runs auto's rules (with one warning per process: ``_warn_untuned_call``)."""
        backend = self.backend
        if backend == 'auto':
            backend = ''
            if len(self.tuned) > 0:
                backend = self._tuned_choice(height, width, channels_last, dtype, needs_grad, device.type, batch)
                if backend == '' and not torch.jit.is_scripting() and not is_compiling():
                    _warn_untuned_call(call_key(height, width, channels_last, dtype, needs_grad, device.type, batch),
                                       self.tuned)
            if backend == '':
                backend = choose_backend(height, width, device, needs_grad, channels_last)
        if backend == 'direct' and not direct_is_safe(self.dim, device.type, dtype):
            return 'matmul'
        return backend

    def _tuned_choice(self, height: int, width: int, channels_last: bool, dtype: str, needs_grad: bool,
                      device_type: str, batch: int, reach: float = TUNED_SHAPE_REACH) -> str:
        """The tuned backend for this call: of the nearest tuned map size (``TUNED_SHAPE_REACH``), then the nearest
        tuned batch size; '' when the table has none near."""
        if torch.jit.is_scripting() or not is_compiling():  # under compile sizes may be symbols, which have no text
            exact = self.tuned.get(call_key(height, width, channels_last, dtype, needs_grad, device_type, batch), '')
            if exact != '':
                return exact
        best, best_shape_gap, best_batch_gap = '', math.inf, 0
        for key, backend in self.tuned.items():
            tuned_height, tuned_width, tuned_batch = _key_size(key, channels_last, dtype, needs_grad, device_type)
            if tuned_batch < 0:
                continue
            shape_gap = _shape_gap(height, width, tuned_height, tuned_width)
            batch_gap = abs(tuned_batch - batch)
            if shape_gap < best_shape_gap or (shape_gap == best_shape_gap and batch_gap < best_batch_gap):
                best, best_shape_gap, best_batch_gap = backend, shape_gap, batch_gap
        return best if best_shape_gap <= reach else ''

    @torch.jit.unused
    def __prepare_scriptable__(self):
        """torch.jit.script calls this first: TorchScript does not see autocast's dtype, so choices tuned under
        autocast are not found there (auto's rules run those calls); say so once."""
        if any(key.split('/')[2] in ('bfloat16', 'float16') for key in self.tuned):
            _warn_once('script', 'SGConv2d under torch.jit.script: TorchScript does not see autocast\'s dtype, so '
                       'backends tuned under bf16 / fp16 autocast are not used there; auto\'s rules run those calls')
        return self

    def _check_input(self, x: torch.Tensor) -> None:
        if not torch.jit.is_scripting():
            _check_is_tensor(x)
        # the shape becomes text only for an error: torch.compile may trace sizes as symbols, which have no text
        if x.dim() != 4:
            raise ValueError(f'SGConv2d expects a 4-D (B, C, H, W) input, got shape {_shape_text(x)}')
        if x.shape[1] != self.dim:
            raise ValueError(f'SGConv2d expects {self.dim} channels, got input of shape {_shape_text(x)}')
        if not x.is_floating_point():
            raise TypeError(f'SGConv2d expects a floating point input, got {x.dtype}')
        if x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f'SGConv2d expects H, W >= 1, got input of shape {_shape_text(x)}')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        height, width = int(x.shape[-2]), int(x.shape[-1])  # ints also under torch.jit.trace (fvcore)
        kh, kw = self.axis_kernels(height, width)
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or kh.requires_grad)
        channels_last = is_channels_last(x)
        # autocast's dtype only for a tuned table's key; the direct guard only asks whether it is float64
        dtype = self._compute_dtype(x) if len(self.tuned) > 0 else dtype_name(x.dtype)
        batch = x.shape[0] if len(self.tuned) > 0 else 1  # no int(): torch.export keeps a dynamic batch symbolic
        backend = self.resolve_backend(height, width, x.device, needs_grad, channels_last, dtype, batch)
        if not torch.jit.is_scripting() and exporting_onnx():
            backend = 'matmul'  # the backend both torch.onnx exporters translate (docs/deployment.md, "ONNX")
        if backend == 'direct':
            return direct_conv2d(x, kh, kw, self.bias)
        if backend == 'matmul' or x.shape[0] == 0:  # MKL's FFT rejects an empty batch
            return toeplitz_conv2d(x, kh, kw, self.bias)
        y = fft_conv2d(x, kh, kw)
        bias = self.bias
        if bias is None:
            return y
        return y + bias.to(y.dtype).view(1, -1, 1, 1)

    def _compute_dtype(self, x: torch.Tensor) -> str:
        """The dtype the products run in: autocast's where it is on (eager), else x's."""
        if not torch.jit.is_scripting() and autocast_on(x.device.type):
            return _autocast_dtype(x.device.type)
        return dtype_name(x.dtype)

    @torch.jit.unused
    def no_weight_decay(self):
        """Kernel parameters, named relative to this module (bias is 1-D, timm skips it already)."""
        return {'kernel_h.weight', 'kernel_w.weight'}

    def extra_repr(self) -> str:
        return (f'{self.dim}, l_max={self.l_max}, backend={self.backend!r}, resize={self.resize!r}, '
                f'bias={self.bias is not None}')
