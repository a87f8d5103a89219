"""SGConv2d against the direct float64 convolution: values, gradients, precision, layouts, size policies, bad input."""
import pytest
import torch
import torch.nn.functional as F

from reference import direct_conv, reference_sgconv
from sgconvnext import SGConv2d
from sgconvnext import sgconv, toeplitz
from sgconvnext.sgconv import choose_backend, fast_fft_length

BACKENDS = ('fft', 'matmul', 'direct', 'auto')
RESIZE = ('fixed', 'stretch')
# (H, W, l_max): 1x1, odd, square at l_max, non-square, larger than l_max, an (H, W) l_max pair.
SHAPES = [(1, 1, 8), (5, 7, 6), (16, 16, 16), (9, 20, 12), (30, 12, 8), (13, 11, (7, 20)), (2, 33, 33)]
# The stride-32 maps of detection and segmentation inputs, 800x1216 and 512x2048, in a model built for a larger
# canvas (dense.py): every backend, exact against float64.
DENSE_SHAPES = [(25, 38, 42), (16, 64, 64)]


def make_layer(l_max, dtype=torch.float64, channels=3, backend='auto', seed=0, resize='stretch'):
    torch.manual_seed(seed)
    layer = SGConv2d(channels, l_max, kernel_dim=4, backend=backend, resize=resize).to(dtype)
    with torch.no_grad():
        layer.bias.normal_()
    return layer


def grads(out, inputs, seed=1):
    torch.manual_seed(seed)
    g = torch.randn(out.shape, dtype=torch.float64).to(out.dtype)
    return torch.autograd.grad(out, inputs, g)


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize('resize', RESIZE)
@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('h,w,l_max', SHAPES + DENSE_SHAPES)
def test_float64_values_and_gradients_match_direct_conv(backend, h, w, l_max, resize):
    layer = make_layer(l_max, backend=backend, resize=resize)
    x = torch.randn(2, 3, h, w, dtype=torch.float64, requires_grad=True)
    params = list(layer.parameters())
    out, ref = layer(x), reference_sgconv(layer, x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for g, g_ref in zip(grads(out, [x] + params), grads(ref, [x] + params)):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('resize', RESIZE)
@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('h,w,l_max', SHAPES)
def test_float32_matches_float64_reference(backend, h, w, l_max, resize):
    layer = make_layer(l_max, backend=backend, resize=resize)
    layer32 = make_layer(l_max, dtype=torch.float32, backend=backend, resize=resize)
    layer32.load_state_dict(layer.state_dict())
    x = torch.randn(2, 3, h, w, dtype=torch.float64, requires_grad=True)
    x32 = x.detach().float().requires_grad_()
    out32, ref = layer32(x32), reference_sgconv(layer, x)
    assert out32.dtype == torch.float32
    assert rel_err(out32.double(), ref) < 1e-5
    for g, g_ref in zip(grads(out32, [x32] + list(layer32.parameters())), grads(ref, [x] + list(layer.parameters()))):
        assert rel_err(g.double(), g_ref) < 1e-5


@pytest.mark.parametrize('channels_last', (False, True))
@pytest.mark.parametrize('h,w,l_max', SHAPES + DENSE_SHAPES)
def test_direct_itself_matches_the_float64_reference_where_it_runs(h, w, l_max, channels_last):
    # The tests above run 3 channels, where "direct" runs matmul in float32 on CPU (sgconv.direct_is_safe): here it
    # runs the depthwise convolutions, at the smallest channel count it is let run.
    channels = sgconv.DIRECT_MIN_CHANNELS_CPU
    layer = make_layer(l_max, channels=channels, backend='direct')
    layer32 = make_layer(l_max, dtype=torch.float32, channels=channels, backend='direct')
    layer32.load_state_dict(layer.state_dict())
    assert layer32.resolve_backend(h, w, torch.device('cpu'), True, channels_last, 'float32') == 'direct'
    x = torch.randn(2, channels, h, w, dtype=torch.float64)
    x32 = x.float().contiguous(memory_format=torch.channels_last) if channels_last else x.float()
    x, x32 = x.requires_grad_(), x32.requires_grad_()
    out32, ref = layer32(x32), reference_sgconv(layer, x)
    assert rel_err(out32.double(), ref) < 1e-5
    for g, g_ref in zip(grads(out32, [x32] + list(layer32.parameters())), grads(ref, [x] + list(layer.parameters()))):
        assert rel_err(g.double(), g_ref) < 1e-5


@pytest.mark.parametrize('resize', RESIZE)
def test_materialize_is_what_the_layer_applies(resize):
    layer = make_layer((9, 14), channels=4, resize=resize)
    for h, w in ((11, 6), (9, 14), (30, 3)):
        x = torch.randn(3, 4, h, w, dtype=torch.float64)
        kernel = layer.materialize(h, w)
        assert kernel.shape == (4, 2 * h - 1, 2 * w - 1)
        torch.testing.assert_close(layer(x), direct_conv(x, kernel, layer.bias), rtol=1e-12, atol=1e-12)


def _smooth_image(size: int, channels: int = 3) -> torch.Tensor:
    """(1, C, size, size) samples at the pixel centres of a fixed smooth function of the relative position."""
    u = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    y, x = torch.meshgrid(u, u, indexing='ij')
    images = [torch.sin(2.1 * x + 1.3 * y + c) + 0.5 * torch.cos(3.0 * x * y - c) for c in range(channels)]
    return torch.stack(images).unsqueeze(0)


@pytest.mark.parametrize('scale', (2, 3))
def test_stretch_a_smooth_image_resampled_gives_the_resampled_output(scale):
    # Under "stretch" the layer is a function of relative position: the same smooth picture sampled s times finer
    # (coarser) gives about the same output, sampled s times finer (coarser). Relative errors measured at init
    # (kernel_dim 4, bias 0, seeds 0-4), growing 16 -> 16s: stretch 0.0016-0.0037 (s=2), 0.020-0.035 (s=3),
    # fixed 0.38-1.12; shrinking 16s -> 16: stretch 0.001-0.006, fixed 0.38-1.07 (and 0.58-5.8 for a stretch
    # that point-samples instead of low-passing, which aliases). The bounds sit between.
    n = 16
    for seed in range(3):
        errors = {}
        for resize in RESIZE:
            grow, shrink = make_layer(n, resize=resize, seed=seed), make_layer(scale * n, resize=resize, seed=seed)
            with torch.no_grad():
                grow.bias.zero_(), shrink.bias.zero_()
                coarse, fine = grow(_smooth_image(n)), grow(_smooth_image(scale * n))
                upsampled = F.interpolate(coarse, scale_factor=scale, mode='bilinear', align_corners=False)
                inner = slice(scale, -scale)  # bilinear upsampling extrapolates at the border pixels
                errors[resize, 'grow'] = rel_err(fine[..., inner, inner], upsampled[..., inner, inner])
                coarse, fine = shrink(_smooth_image(n)), shrink(_smooth_image(scale * n))
                errors[resize, 'shrink'] = rel_err(coarse[..., 1:-1, 1:-1], F.avg_pool2d(fine, scale)[..., 1:-1, 1:-1])
        assert max(errors['stretch', 'grow'], errors['stretch', 'shrink']) < 0.05, errors
        assert min(errors['fixed', 'grow'], errors['fixed', 'shrink']) > 0.3, errors  # the check can tell


@pytest.mark.parametrize('resize', RESIZE)
@pytest.mark.parametrize('channels_last', (True, False))
@pytest.mark.parametrize('h,w,l_max', SHAPES)
def test_matmul_image_by_image_matches_direct_conv(monkeypatch, channels_last, h, w, l_max, resize):
    # The image-by-image path normally starts at 2048 pixels; lower the bar so small maps take it too.
    monkeypatch.setattr(toeplitz, 'PER_IMAGE_MIN_PIXELS', 1)
    layer = make_layer(l_max, backend='matmul', resize=resize)
    x = torch.randn(3, 3, h, w, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    params = [x] + list(layer.parameters())
    out, ref = layer(x), reference_sgconv(layer, x)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for g, g_ref in zip(grads(out, params), grads(ref, params)):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), ref, rtol=1e-10, atol=1e-10)


def test_matmul_image_by_image_gradcheck(monkeypatch):
    monkeypatch.setattr(toeplitz, 'PER_IMAGE_MIN_PIXELS', 1)
    layer = make_layer(5, backend='matmul')
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    kh, kw = layer.axis_kernels(5, 4)
    assert type(toeplitz.toeplitz_conv2d(x, kh, kw, layer.bias).grad_fn).__name__ == '_ImageByImageBackward'
    assert torch.autograd.gradcheck(toeplitz.toeplitz_conv2d, (x, kh, kw, layer.bias))
    assert torch.autograd.gradgradcheck(toeplitz.toeplitz_conv2d, (x, kh, kw, layer.bias))  # e.g. grad penalties


def test_matmul_image_by_image_with_frozen_kernels(monkeypatch):
    monkeypatch.setattr(toeplitz, 'PER_IMAGE_MIN_PIXELS', 1)
    layer = make_layer(6, backend='matmul').requires_grad_(False)
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    out, ref = layer(x), reference_sgconv(layer, x)
    assert type(out.grad_fn).__name__ == '_ImageByImageBackward'
    (g,), (g_ref,) = grads(out, [x]), grads(ref, [x])
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


def test_matmul_takes_image_by_image_path_only_where_measured_faster():
    layer = make_layer(48, dtype=torch.float32, channels=4, backend='matmul')
    x = torch.randn(2, 4, 48, 48, requires_grad=True)  # 2304 pixels >= PER_IMAGE_MIN_PIXELS
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    out_cl = layer(x_cl)
    assert type(out_cl.grad_fn).__name__ == '_ImageByImageBackward'
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    assert type(layer(x).grad_fn).__name__ != '_ImageByImageBackward'  # NCHW: whole batch
    assert type(layer(x_cl[:, :, :28, :28]).grad_fn).__name__ != '_ImageByImageBackward'  # small map
    assert type(layer(x_cl[:1]).grad_fn).__name__ != '_ImageByImageBackward'  # one image: whole batch
    with torch.autocast('cpu', dtype=torch.bfloat16):  # low precision: the whole-batch path follows autocast
        out_amp = layer(x_cl)
    assert out_amp.dtype == torch.bfloat16 and type(out_amp.grad_fn).__name__ != '_ImageByImageBackward'
    torch.testing.assert_close(out_cl, layer(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('backend', ('fft', 'matmul', 'direct'))
def test_half_precision_inputs_keep_their_dtype(backend):
    layer = make_layer(10, dtype=torch.float32, backend=backend).to(torch.bfloat16)
    x = torch.randn(2, 3, 10, 7).to(torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    assert rel_err(out.double(), layer.double()(x.double())) < 2e-2


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('grad_layout', (torch.channels_last, torch.contiguous_format))
def test_channels_last_input(backend, grad_layout):
    layer = make_layer(12, channels=5, backend=backend)
    x = torch.randn(3, 5, 12, 9, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    params = [x] + list(layer.parameters())
    out, ref = layer(x), reference_sgconv(layer, x)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    if backend in ('matmul', 'direct'):  # like a conv, these keep the input's memory format
        assert out.is_contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(out.shape, dtype=torch.float64).contiguous(memory_format=grad_layout)
    for g, g_ref in zip(torch.autograd.grad(out, params, upstream), torch.autograd.grad(ref, params, upstream)):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


def test_matmul_output_keeps_contiguous_layout():
    layer = make_layer(6, backend='matmul')
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    assert out.is_contiguous()
    out.backward(torch.randn_like(out))
    assert x.grad.is_contiguous()


@pytest.mark.parametrize('backend', BACKENDS)
def test_empty_batch(backend):
    layer = make_layer(8, dtype=torch.float32, backend=backend)
    out = layer(torch.randn(0, 3, 8, 5))
    assert out.shape == (0, 3, 8, 5)


@pytest.mark.parametrize('x,error,match', [
    (torch.randn(3, 8, 8), ValueError, '4-D'),
    (torch.randn(1, 2, 3, 8, 8), ValueError, '4-D'),
    (torch.randn(2, 4, 8, 8), ValueError, '3 channels'),
    (torch.randint(0, 5, (2, 3, 8, 8)), TypeError, 'floating'),
    (torch.randn(2, 3, 0, 8), ValueError, 'H, W >= 1'),
    ([[1.0]], TypeError, 'torch.Tensor'),
])
def test_bad_input(x, error, match):
    with pytest.raises(error, match=match):
        make_layer(8, dtype=torch.float32)(x)


@pytest.mark.parametrize('kwargs,error,match', [
    (dict(dim=3, l_max=8, backend='cuda'), ValueError, 'backend'),
    (dict(dim=0, l_max=8), ValueError, 'dim'),
    (dict(dim=3, l_max=0), ValueError, 'l_max'),
    (dict(dim=3, l_max=(8, -1)), ValueError, 'l_max'),
    (dict(dim=3, l_max=(8, 8, 8)), ValueError, 'l_max'),
    (dict(dim=3, l_max=7.5), TypeError, 'l_max'),
    (dict(dim=3, l_max=8, kernel_dim=0), ValueError, 'kernel_dim'),
    (dict(dim=3, l_max=8, resize='nope'), ValueError, "'fixed', 'stretch'"),
    (dict(dim=3, l_max=8, resize=3), TypeError, "'fixed', 'stretch'"),
])
def test_bad_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        SGConv2d(**kwargs)


def test_resize_policy_can_be_switched_and_is_checked():
    layer = make_layer(8)
    x = torch.randn(1, 3, 20, 20, dtype=torch.float64)
    stretched = layer(x)
    layer.resize = 'fixed'
    assert (layer.kernel_h.resize, layer.kernel_w.resize) == ('fixed', 'fixed')
    torch.testing.assert_close(layer(x), reference_sgconv(layer, x), rtol=1e-10, atol=1e-10)
    assert not torch.allclose(layer(x), stretched)
    with pytest.raises(ValueError, match="'fixed', 'stretch'"):
        layer.resize = 'nope'
    assert layer.resize == 'fixed'


def test_bad_materialize_size():
    with pytest.raises(ValueError, match='height'):
        SGConv2d(3, 8).materialize(0, 4)


def test_fast_fft_length():
    assert [fast_fft_length(n) for n in (1, 11, 13, 27, 55, 111, 1023)] == [1, 12, 14, 27, 56, 112, 1024]
    for n in range(1, 300):
        m = fast_fft_length(n)
        assert m >= n and all(fast_fft_length(k) == m for k in range(n, m + 1))


def test_auto_backend_choice():
    cpu = torch.device('cpu')
    layer = SGConv2d(2, 8)
    assert layer.resolve_backend(56, 56, cpu) == choose_backend(56, 56, cpu) == 'matmul'
    assert choose_backend(56, 56, cpu, needs_grad=False, channels_last=True) == 'direct'
    assert choose_backend(56, 56, cpu, needs_grad=False, channels_last=False) == 'matmul'  # direct is slow on NCHW
    assert choose_backend(7, 7, cpu, needs_grad=True, channels_last=True) == 'matmul'  # direct's backward is slow
    assert choose_backend(7, 7, cpu, needs_grad=True, channels_last=False) == 'matmul'
    assert choose_backend(7, 7, cpu, needs_grad=False, channels_last=True) == 'direct'
    assert choose_backend(7, 7, cpu, needs_grad=False, channels_last=False) == 'matmul'
    assert choose_backend(14, 14, cpu, needs_grad=True, channels_last=True) == 'matmul'
    assert choose_backend(7, 100_000, cpu) == 'fft'  # matmul's cost grows with W^2 there
    assert choose_backend(64, 64, cpu, needs_grad=False, channels_last=True) == 'direct'
    assert choose_backend(65, 64, cpu, needs_grad=False, channels_last=True) == 'matmul'  # direct loses above 64
    assert SGConv2d(2, 8, backend='fft').resolve_backend(56, 56, cpu) == 'fft'


@pytest.mark.parametrize('channels_last', (True, False))
@pytest.mark.parametrize('grad', (True, False))
def test_auto_matches_reference_with_and_without_grad(grad, channels_last):
    layer = make_layer(12)
    x = torch.randn(2, 3, 12, 10, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.set_grad_enabled(grad):
        out = layer(x)
    torch.testing.assert_close(out, reference_sgconv(layer, x), rtol=1e-10, atol=1e-10)


@pytest.mark.slow
@pytest.mark.parametrize('backend', ('fft', 'matmul'))
def test_torch_compile_matches_eager(backend):
    layer = make_layer(12, dtype=torch.float32, channels=4, backend=backend)
    x = torch.randn(2, 4, 12, 9, requires_grad=True)
    compiled = torch.compile(layer)
    out_c = compiled(x)
    out_e = layer(x)
    torch.testing.assert_close(out_c, out_e, rtol=1e-5, atol=1e-5)
    g_c = grads(out_c, [x] + list(layer.parameters()))
    g_e = grads(out_e, [x] + list(layer.parameters()))
    for a, b in zip(g_c, g_e):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_torch_export_matmul_backend():
    layer = make_layer(10, dtype=torch.float32, channels=4, backend='matmul').eval()
    x = torch.randn(2, 4, 10, 7)
    exported = torch.export.export(layer, (x,))
    x2 = torch.randn(2, 4, 10, 7)
    torch.testing.assert_close(exported.module()(x2), layer(x2))


BF16_UNIT_ROUNDOFF = 2.0 ** -8  # bf16 keeps 8 significant bits


@pytest.mark.parametrize('channels', (3, sgconv.DIRECT_MIN_CHANNELS_CPU))  # 3: "direct" runs matmul (the guard)
@pytest.mark.parametrize('channels_last', (False, True))
@pytest.mark.parametrize('backend', BACKENDS)
def test_bf16_autocast_values_and_gradients_match_float64_within_bf16_precision(backend, channels_last, channels):
    # Under autocast matmul and direct multiply bf16 operands (x and the kernels rounded to 8 bits) with float32
    # accumulation, and round each of their two products' outputs; fft computes in float32. So each output and
    # gradient carries a few bf16 roundings, relative to its size: the bound is 8 unit roundoffs, norm-wise
    # (measured 2026-12-02: at most 1.0 roundoff for matmul, 1.9 for direct, 6e-5 of one for fft).
    layer = make_layer((9, 14), channels=channels, backend=backend)
    layer32 = make_layer((9, 14), dtype=torch.float32, channels=channels, backend=backend)
    layer32.load_state_dict(layer.state_dict())
    x = torch.randn(2, channels, 9, 14, dtype=torch.float64, requires_grad=True)
    x32 = x.detach().float()
    x32 = (x32.contiguous(memory_format=torch.channels_last) if channels_last else x32).requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = layer32(x32)
    ref = reference_sgconv(layer, x)
    errors = [rel_err(out.double(), ref)]
    for g, g_ref in zip(grads(out, [x32] + list(layer32.parameters())), grads(ref, [x] + list(layer.parameters()))):
        errors.append(rel_err(g.double(), g_ref))
    assert max(errors) < 8 * BF16_UNIT_ROUNDOFF, [e / BF16_UNIT_ROUNDOFF for e in errors]
