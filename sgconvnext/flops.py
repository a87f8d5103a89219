"""FLOP counting that sees SGConv2d's FFTs: fvcore handles for the ops fvcore does not know.

fvcore's ``FlopCountAnalysis`` counts 0 for ``torch.fft`` ops (it only logs "Unsupported operator
aten::fft_rfft2") and ignores every ``aten::mul``, so the fft backend of ``SGConv2d`` would look free.
``count_flops(model, inputs)`` is a ``FlopCountAnalysis`` with handles for those ops added; ``.total()``,
``.by_operator()``, ``.by_module()`` and ``.unsupported_ops()`` work as usual.

Units follow fvcore: one fused multiply-add (MAC) is one "flop", i.e. one fvcore unit stands for two
real floating point operations (a multiply and an add). The ops we add are counted from their standard
real-operation counts, halved into that unit:

* An FFT of N points (N = product of the transformed lengths, for a multi-dimensional transform) is
  ``5 N log2 N`` real operations when complex-to-complex: radix-2 Cooley-Tukey does (N/2) log2 N butterflies
  of one complex multiply (6 operations) and two complex adds (4). This is the count FFT benchmarks
  (FFTW's benchFFT) quote, so we count ``2.5 N log2 N`` MACs. A transform with a real side (``rfft*``,
  ``irfft*``, ``hfft*``, ``ihfft*``, or ``fft`` of a real input) does half the work:
  ``1.25 N log2 N`` MACs. A batch of independent transforms counts each one. Padding (``s``/``n``
  larger than the input) is transformed at full length, as MKL, pocketfft and cuFFT do.
* A complex elementwise product is 6 real operations (4 multiplies, 2 adds): 3 MACs per output
  element; a complex-by-real product is 2 operations: 1 MAC. These products are the convolution
  itself in the Fourier domain, so they are counted although fvcore does not count real elementwise
  ops. ``aten::mul`` of real tensors counts 0, as in plain fvcore, so a model without complex tensors
  gets the same count with or without these handles; it just no longer shows in ``unsupported_ops()``.

Data-movement ops the layer uses (``aten::flip``, ``aten::unfold``, ``aten::pad``) are marked zero-cost,
like fvcore's own ignored ops (``aten::permute``, ``aten::roll``, ...). The matmul backend's ``aten::bmm``
(and ``aten::baddbmm``, a bmm with the bias added, given the same count here),
the direct backend's depthwise ``aten::_convolution`` and the kernel generation's ``aten::matmul`` are
counted by fvcore's handles already. Real elementwise ops (bias add, the kernels' ``1/Z``) follow
fvcore's convention for every model: not counted, listed by ``unsupported_ops()``.

Which backend is counted: ``"auto"`` picks by map size and by whether gradients are needed, so the
trace runs in the grad mode current when ``count_flops`` is called (``torch.no_grad()`` -> the inference
path), or the one passed as ``grad_enabled``.
"""
import math
import warnings
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

with warnings.catch_warnings():  # fvcore's import calls torch.jit.script, which now warns that it is deprecated
    warnings.filterwarnings('ignore', message='.*torch.jit.script.* is deprecated', category=FutureWarning)
    from fvcore.nn import ActivationCountAnalysis, FlopCountAnalysis
    from fvcore.nn.jit_handles import bmm_flop_jit, generic_activation_jit, get_shape

__all__ = [
    'FFT_OPS', 'FLOP_HANDLES', 'ZERO_COST_OPS', 'complex_mul_flop_jit', 'count_activations', 'count_flops',
    'fft_flop_jit',
]

# torch.fft ops as the jit tracer records them. The transforms whose output is one-sided (last
# transformed dim n // 2 + 1) cannot give their length from the output shape.
FFT_OPS = tuple(f'aten::fft_{kind}{suffix}' for kind in ('fft', 'ifft', 'rfft', 'irfft', 'hfft', 'ihfft')
                for suffix in ('', '2', 'n'))
_ONE_SIDED_OUTPUT = tuple(f'aten::fft_{kind}{suffix}' for kind in ('rfft', 'ihfft') for suffix in ('', '2', 'n'))
ZERO_COST_OPS = ('aten::flip', 'aten::unfold', 'aten::pad')

_UNKNOWN = object()


def _constant(value) -> Any:
    """The Python value of a traced constant or list of constants, else ``_UNKNOWN``."""
    node = value.node()
    if node.kind() == 'prim::Constant':
        return value.toIValue()
    if node.kind() == 'prim::ListConstruct':
        items = [_constant(v) for v in node.inputs()]
        return _UNKNOWN if any(i is _UNKNOWN or i is None for i in items) else items
    return _UNKNOWN


def _is_complex(value) -> bool:
    """Whether a traced value is a complex tensor (False for real tensors and Python scalars)."""
    try:
        scalar_type = value.type().scalarType()
    except (AttributeError, RuntimeError):
        return isinstance(value.toIValue(), complex) if value.node().kind() == 'prim::Constant' else False
    return scalar_type is not None and 'Complex' in scalar_type


def _shape(value, what: str) -> List[int]:
    shape = get_shape(value)
    if shape is None:
        raise ValueError(f'cannot count flops: the {what} has no complete shape in the trace')
    return list(shape)


def fft_flop_jit(inputs: List[Any], outputs: List[Any], op_name: str = 'aten::fft_fft') -> float:
    """MACs of one traced ``torch.fft`` op: transforms * (2.5 or 1.25) * N * log2(N), see the module doc.

    Every torch.fft op has the signature ``(input, n | s, dim, norm)``.
    """
    in_shape, out_shape = _shape(inputs[0], 'FFT input'), _shape(outputs[0], 'FFT output')
    ndim = len(out_shape)
    size_arg, dim_arg = _constant(inputs[1]), _constant(inputs[2])
    if isinstance(size_arg, int):
        size_arg = [size_arg]
    if dim_arg is _UNKNOWN:
        raise ValueError(f'cannot count flops of {op_name}: its dim argument is not a constant')
    if isinstance(dim_arg, int):
        dims = [dim_arg]
    elif dim_arg is None:  # fftn-style: the last len(s) dims, or all of them
        count = len(size_arg) if isinstance(size_arg, list) else ndim
        dims = list(range(ndim - count, ndim))
    else:
        dims = list(dim_arg)
    dims = [d % ndim for d in dims]
    lengths = [out_shape[d] for d in dims]  # full transform length on every dim but a one-sided last one
    if op_name in _ONE_SIDED_OUTPUT:
        if isinstance(size_arg, list):
            lengths[-1] = size_arg[-1]
        elif size_arg is None:
            lengths[-1] = in_shape[dims[-1]]
        else:  # a length computed at run time: take the even one of the two that fit the output
            lengths[-1] = 2 * (out_shape[dims[-1]] - 1)
    points = math.prod(lengths)
    transforms = math.prod(s for d, s in enumerate(out_shape) if d not in dims)
    if points <= 1 or transforms == 0:
        return 0
    real_side = not _is_complex(inputs[0]) or not _is_complex(outputs[0])
    return transforms * (1.25 if real_side else 2.5) * points * math.log2(points)


def _fft_handle(op_name: str):
    def handle(inputs: List[Any], outputs: List[Any]) -> float:
        return fft_flop_jit(inputs, outputs, op_name)
    handle.__name__ = handle.__qualname__ = f'{op_name.split("::")[1]}_flop_jit'
    return handle


def complex_mul_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``aten::mul``: 3 MACs per output element when both factors are complex, 1 when one is real, and 0
    for a real product (fvcore does not count real elementwise ops)."""
    if not _is_complex(outputs[0]):
        return 0
    elements = math.prod(_shape(outputs[0], 'product'))
    return elements * (3 if _is_complex(inputs[0]) and _is_complex(inputs[1]) else 1)


FLOP_HANDLES = {name: _fft_handle(name) for name in FFT_OPS}
FLOP_HANDLES['aten::mul'] = complex_mul_flop_jit


def baddbmm_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """``aten::baddbmm(input, batch1, batch2)``: the batched product's MACs, as fvcore counts ``aten::bmm``
    (the added input is elementwise, not counted)."""
    return bmm_flop_jit(inputs[1:3], outputs)


FLOP_HANDLES['aten::baddbmm'] = baddbmm_flop_jit


class _SGConvTracing:
    """Mixin for fvcore analyses: trace in a fixed grad mode (it decides the backend "auto" runs)."""

    def _set_grad_mode(self, grad_enabled: Optional[bool]) -> None:
        self._grad_enabled = torch.is_grad_enabled() if grad_enabled is None else bool(grad_enabled)

    def _analyze(self):
        if self._stats is not None:
            return self._stats
        with torch.set_grad_enabled(self._grad_enabled):
            return super()._analyze()


class SGFlopCountAnalysis(_SGConvTracing, FlopCountAnalysis):
    """fvcore's FlopCountAnalysis with the FFT / complex-product handles of this module."""

    def __init__(self, model: nn.Module, inputs: Union[torch.Tensor, Tuple[torch.Tensor, ...]],
                 grad_enabled: Optional[bool] = None):
        super().__init__(model, inputs)
        self._set_grad_mode(grad_enabled)
        self.set_op_handle(**FLOP_HANDLES)
        self.set_op_handle(**{name: None for name in ZERO_COST_OPS})


class SGActivationCountAnalysis(_SGConvTracing, ActivationCountAnalysis):
    """fvcore's ActivationCountAnalysis that also counts the outputs of FFT ops (elements, real or complex)."""

    def __init__(self, model: nn.Module, inputs: Union[torch.Tensor, Tuple[torch.Tensor, ...]],
                 grad_enabled: Optional[bool] = None):
        super().__init__(model, inputs)
        self._set_grad_mode(grad_enabled)
        self.set_op_handle(**{name: generic_activation_jit() for name in FFT_OPS})
        self.set_op_handle(**{name: None for name in ZERO_COST_OPS})


def _as_inputs(inputs: Union[torch.Tensor, Sequence[torch.Tensor]]) -> Tuple[torch.Tensor, ...]:
    return (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)


def count_flops(model: nn.Module, inputs: Union[torch.Tensor, Sequence[torch.Tensor]],
                grad_enabled: Optional[bool] = None) -> FlopCountAnalysis:
    """fvcore FlopCountAnalysis of ``model(*inputs)`` in MACs, FFTs and complex products counted.

    Lazy like fvcore's: the model is traced on the first ``.total()`` / ``.by_operator()`` / ... call, in
    the grad mode current now (or ``grad_enabled``), which decides the backend ``"auto"`` counts.
    """
    return SGFlopCountAnalysis(model, _as_inputs(inputs), grad_enabled)


def count_activations(model: nn.Module, inputs: Union[torch.Tensor, Sequence[torch.Tensor]],
                      grad_enabled: Optional[bool] = None) -> ActivationCountAnalysis:
    """fvcore ActivationCountAnalysis (output elements of convs, matmuls, ...) plus FFT outputs."""
    return SGActivationCountAnalysis(model, _as_inputs(inputs), grad_enabled)
