"""count_flops: FFT and complex-product handles against analytic counts, SGConv2d against hand counts."""
import logging
import math
import warnings

import pytest
import timm
import torch
from fvcore.nn import FlopCountAnalysis
from torch import nn

import sgconvnext.kernel
import sgconvnext.sgconv
from sgconvnext import SGConv2d
from sgconvnext.flops import count_activations, count_flops

logging.getLogger('fvcore').setLevel(logging.ERROR)  # fvcore logs every unsupported elementwise op


def fft_macs(points, real, transforms=1):
    """Reference: 5 N log2 N real operations per complex N-point FFT, half with a real side, 2 per MAC."""
    return transforms * (5 if not real else 2.5) * points * math.log2(points) / 2


class Op(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def by_op(fn, x):
    return dict(count_flops(Op(fn), x).by_operator())


REAL = torch.randn(2, 3, 10, 12)
CPLX = torch.randn(2, 3, 10, 12, dtype=torch.complex64)


@pytest.mark.parametrize('fn,x,name,expected', [
    # complex-to-complex: 2 * 3 * 10 transforms of 12 points
    (lambda x: torch.fft.fft(x), CPLX, 'fft_fft', fft_macs(12, False, 60)),
    (lambda x: torch.fft.ifft(x, dim=2), CPLX, 'fft_ifft', fft_macs(10, False, 72)),
    # real input: half the work; n pads (16) or crops (8) the transformed axis
    (lambda x: torch.fft.fft(x, n=16), REAL, 'fft_fft', fft_macs(16, True, 60)),
    (lambda x: torch.fft.rfft(x), REAL, 'fft_rfft', fft_macs(12, True, 60)),
    (lambda x: torch.fft.rfft(x, n=15), REAL, 'fft_rfft', fft_macs(15, True, 60)),
    (lambda x: torch.fft.rfft(x, n=8, dim=-2), REAL, 'fft_rfft', fft_macs(8, True, 72)),
    (lambda x: torch.fft.irfft(x, n=21), CPLX, 'fft_irfft', fft_macs(21, True, 60)),
    (lambda x: torch.fft.hfft(x, n=22), CPLX, 'fft_hfft', fft_macs(22, True, 60)),
    (lambda x: torch.fft.ihfft(x), REAL, 'fft_ihfft', fft_macs(12, True, 60)),
    # 2-D and n-D: N is the product of the transformed lengths, one transform per remaining index
    (lambda x: torch.fft.rfft2(x, s=(24, 20)), REAL, 'fft_rfft2', fft_macs(24 * 20, True, 6)),
    (lambda x: torch.fft.rfft2(x), REAL, 'fft_rfft2', fft_macs(10 * 12, True, 6)),
    (lambda x: torch.fft.irfft2(x, s=(16, 9)), CPLX, 'fft_irfft2', fft_macs(16 * 9, True, 6)),
    (lambda x: torch.fft.fft2(x, dim=(1, 3)), CPLX, 'fft_fft2', fft_macs(3 * 12, False, 20)),
    (lambda x: torch.fft.ifft2(x), CPLX, 'fft_ifft2', fft_macs(120, False, 6)),
    (lambda x: torch.fft.fftn(x), CPLX, 'fft_fftn', fft_macs(2 * 3 * 10 * 12, False)),
    (lambda x: torch.fft.fftn(x, s=(5, 6)), CPLX, 'fft_fftn', fft_macs(30, False, 6)),
    (lambda x: torch.fft.rfftn(x, dim=(0, 3)), REAL, 'fft_rfftn', fft_macs(24, True, 30)),
    (lambda x: torch.fft.irfftn(x, s=(4, 10, 14), dim=(1, 2, 3)), CPLX, 'fft_irfftn', fft_macs(560, True, 2)),
])
def test_fft_handles_match_analytic_count(fn, x, name, expected):
    assert by_op(fn, x) == pytest.approx({name: expected})


def test_fft_of_one_point_is_free():
    flops = count_flops(Op(lambda x: torch.fft.fft(x, dim=1)), torch.randn(4, 1, dtype=torch.complex64))
    assert flops.total() == 0 and not flops.unsupported_ops()


@pytest.mark.parametrize('fn,expected', [
    (lambda x: x * (x + 1j), 3 * 2 * 3 * 10 * 12),     # complex * complex: 4 mul + 2 add = 6 ops = 3 MACs
    (lambda x: x * x.real, 1 * 2 * 3 * 10 * 12),       # complex * real: 2 ops = 1 MAC
    (lambda x: x.real * x.imag, 0),                    # real elementwise: fvcore does not count them
])
def test_mul_counts_complex_products_only(fn, expected):
    assert by_op(fn, CPLX).get('mul', 0) == expected


# Hand counts for SGConv2d(C=3, l_max=(12, 10), kernel_dim=4) on a (B=2, 3, 12, 10) input.
B, C, H, W, D = 2, 32, 12, 10, 4  # 32 channels: the fewest "direct" runs its convolutions for on CPU


def kernel_generation_macs():
    """Each axis kernel is weight (C, 2 * n_scales * d) @ basis (2 * n_scales * d, 2 * l_max - 1)."""
    total = 0
    for length in (H, W):
        n_scales = 1 + math.ceil(math.log2(length / D))  # 3 for both 12 and 10: d, d, 2d covers 16 >= 12
        total += C * (2 * n_scales * D) * (2 * length - 1)
    return total


def hand_count(backend):
    if backend == 'matmul':   # x (C, B*H, W) @ Tw^T (C, W, W), then Th (C, H, H) @ y (C, H, B*W)
        return C * B * H * W * W + C * H * H * B * W
    if backend == 'direct':   # depthwise (1, 2W-1) then (2H-1, 1) convolutions, H x W outputs each
        return B * C * H * W * (2 * W - 1) + B * C * H * W * (2 * H - 1)
    # fft: fast lengths >= 2n - 1: 24 = 2^3 * 3 >= 23 and 20 = 2^2 * 5 >= 19
    n_h, n_w = 24, 20
    bins = n_h * (n_w // 2 + 1)
    return (fft_macs(n_h, True, C)              # fft of the real H-axis kernels
            + fft_macs(n_w, True, C)            # rfft of the W-axis kernels
            + fft_macs(n_h * n_w, True, B * C)  # rfft2 of the input
            + 3 * C * bins                      # outer product of the two axis spectra (complex)
            + 3 * B * C * bins                  # times the input spectrum (complex)
            + fft_macs(n_h * n_w, True, B * C))  # irfft2


def make_layer(backend):
    torch.manual_seed(0)
    return SGConv2d(C, (H, W), kernel_dim=D, backend=backend)


@pytest.mark.parametrize('backend', ('fft', 'matmul', 'direct'))
@pytest.mark.parametrize('grad', (True, False))
def test_sgconv_count_equals_hand_count(backend, grad):
    layer, x = make_layer(backend), torch.randn(B, C, H, W)
    with torch.set_grad_enabled(grad):
        flops = count_flops(layer, x)
    assert flops.total() == pytest.approx(hand_count(backend) + kernel_generation_macs(), rel=1e-12)
    unsupported = set(flops.unsupported_ops())
    assert not {op for op in unsupported if 'fft' in op or op == 'aten::mul'}, unsupported
    assert unsupported <= {'aten::add', 'aten::sub', 'aten::rsub', 'aten::div'}  # elementwise, as fvcore leaves them


@pytest.mark.parametrize('size', ((20, 16), (7, 5)))
def test_stretched_kernels_count_what_runs_each_forward(size):
    # At another map size the kernel is weight @ (basis @ S_L); basis @ S_L is computed once per size (cached), so
    # a forward runs, and fvcore counts, one (C, 2 n_scales d) @ (2 n_scales d, 2L - 1) product per axis, cold
    # cache or warm.
    h, w = size
    layer, x = make_layer('matmul'), torch.randn(B, C, h, w)
    assert layer.resize == 'stretch'
    expected = C * B * h * w * w + C * h * h * B * w
    for built, length in ((H, h), (W, w)):
        expected += C * (2 * (1 + math.ceil(math.log2(built / D))) * D) * (2 * length - 1)
    assert not layer.kernel_h._stretched
    assert count_flops(layer, x).total() == pytest.approx(expected, rel=1e-12)  # the first trace fills the cache
    assert set(layer.kernel_h._stretched) == {h}
    assert count_flops(layer, x).total() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize('grad,backend', ((True, 'matmul'), (False, 'direct')))
def test_auto_is_counted_as_the_backend_it_runs(grad, backend):
    layer, x = make_layer('auto'), torch.randn(B, C, H, W).contiguous(memory_format=torch.channels_last)
    assert layer.resolve_backend(H, W, x.device, needs_grad=grad, channels_last=True) == backend
    expected = hand_count(backend) + kernel_generation_macs()
    with torch.set_grad_enabled(grad):
        lazy = count_flops(layer, x)
    assert lazy.total() == pytest.approx(expected)                   # traced later, in the mode of the call
    assert count_flops(layer, x, grad_enabled=grad).total() == pytest.approx(expected)


@pytest.mark.parametrize('backend', ('fft', 'matmul', 'direct'))
def test_layer_traces_with_torch_jit(backend):
    """fvcore counts by torch.jit.trace, under which sizes read from x.shape are traced values."""
    layer, x = make_layer(backend), torch.randn(B, C, H, W)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # TracerWarning: sizes become constants, as intended
        traced = torch.jit.trace(layer, x)
    torch.testing.assert_close(traced(x), layer(x))


def test_fft_activations_count_transform_outputs():
    layer, x = make_layer('fft'), torch.randn(B, C, H, W)
    n_h, bins = 24, 24 * 11
    fft_outputs = C * n_h + C * 11 + B * C * bins + B * C * n_h * 20   # fft, rfft, rfft2, irfft2
    kernels = C * (2 * H - 1) + C * (2 * W - 1)                        # kernel generation matmuls
    assert count_activations(layer, x).total() == fft_outputs + kernels


def test_convnext_count_unchanged_by_our_handles():
    model = timm.create_model('convnext_atto').eval()
    x = torch.randn(1, 3, 64, 64)
    ours, plain = count_flops(model, x), FlopCountAnalysis(model, x)
    assert ours.total() == plain.total() > 0
    assert ours.by_operator() == plain.by_operator()
    assert ours.by_module() == plain.by_module()


@pytest.mark.parametrize('backend', ('fft', 'auto'))
def test_sgconvnext_has_no_unsupported_fft_or_complex_op(backend):
    model = timm.create_model('sgconvnext_atto', img_size=64, sg_backend=backend).eval()
    flops = count_flops(model, torch.randn(1, 3, 64, 64))
    by_op = flops.by_operator()
    unsupported = flops.unsupported_ops()
    assert not [op for op in unsupported if 'fft' in op or op == 'aten::mul'], unsupported
    if backend == 'fft':
        assert by_op['fft_rfft2'] > 0 and by_op['fft_irfft2'] > 0 and by_op['mul'] > 0
    # every block's mixer is counted on its own, so per-module tables work
    mixers = [name for name, m in model.named_modules() if isinstance(m, SGConv2d)]
    assert all(flops.total(name) > 0 for name in mixers)
    assert flops.total() > sum(flops.total(name) for name in mixers)
