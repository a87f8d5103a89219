"""SGConv2d against the direct float64 convolution: values, gradients, precision, layouts, bad input."""
import pytest
import torch

from reference import direct_conv, reference_sgconv
from sgconvnext import SGConv2d
from sgconvnext import toeplitz
from sgconvnext.sgconv import choose_backend, fast_fft_length

BACKENDS = ('fft', 'matmul', 'direct', 'auto')
# (H, W, l_max): 1x1, odd, square at l_max, non-square, larger than l_max, an (H, W) l_max pair.
SHAPES = [(1, 1, 8), (5, 7, 6), (16, 16, 16), (9, 20, 12), (30, 12, 8), (13, 11, (7, 20)), (2, 33, 33)]


def make_layer(l_max, dtype=torch.float64, channels=3, backend='auto', seed=0):
    torch.manual_seed(seed)
    layer = SGConv2d(channels, l_max, kernel_dim=4, backend=backend).to(dtype)
    with torch.no_grad():
        layer.bias.normal_()
    return layer


def grads(out, inputs, seed=1):
    torch.manual_seed(seed)
    g = torch.randn(out.shape, dtype=torch.float64).to(out.dtype)
    return torch.autograd.grad(out, inputs, g)


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('h,w,l_max', SHAPES)
def test_float64_values_and_gradients_match_direct_conv(backend, h, w, l_max):
    layer = make_layer(l_max, backend=backend)
    x = torch.randn(2, 3, h, w, dtype=torch.float64, requires_grad=True)
    params = list(layer.parameters())
    out, ref = layer(x), reference_sgconv(layer, x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    for g, g_ref in zip(grads(out, [x] + params), grads(ref, [x] + params)):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('h,w,l_max', SHAPES)
def test_float32_matches_float64_reference(backend, h, w, l_max):
    layer = make_layer(l_max, backend=backend)
    layer32 = make_layer(l_max, dtype=torch.float32, backend=backend)
    layer32.load_state_dict(layer.state_dict())
    x = torch.randn(2, 3, h, w, dtype=torch.float64, requires_grad=True)
    x32 = x.detach().float().requires_grad_()
    out32, ref = layer32(x32), reference_sgconv(layer, x)
    assert out32.dtype == torch.float32
    assert rel_err(out32.double(), ref) < 1e-5
    for g, g_ref in zip(grads(out32, [x32] + list(layer32.parameters())), grads(ref, [x] + list(layer.parameters()))):
        assert rel_err(g.double(), g_ref) < 1e-5


def test_materialize_is_what_the_layer_applies():
    layer = make_layer((9, 14), channels=4)
    x = torch.randn(3, 4, 11, 6, dtype=torch.float64)
    kernel = layer.materialize(11, 6)
    assert kernel.shape == (4, 21, 11)
    torch.testing.assert_close(layer(x), direct_conv(x, kernel, layer.bias), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('backend', ('fft', 'matmul', 'direct'))
def test_impulse_response_is_the_kernel_window_not_circular(backend):
    layer = make_layer(16, channels=1, backend=backend)
    h, w, row = 8, 6, 3
    x = torch.zeros(1, 1, h, w, dtype=torch.float64)
    x[0, 0, row, 0] = 1.0  # an impulse on the left edge
    kernel = layer.materialize(h, w)[0]  # centre at (h-1, w-1)
    y = (layer(x) - layer.bias.view(1, -1, 1, 1))[0, 0]
    # Linear convolution: y[i, j] = K[i - row, j - 0]. A circular one would also add K[., j - w] terms.
    expected = kernel[h - 1 - row:2 * h - 1 - row, w - 1:2 * w - 1]
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('backend', ('fft', 'matmul', 'direct'))
def test_gradcheck(backend):
    layer = make_layer(5, channels=2, backend=backend)
    x = torch.randn(1, 2, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp, *ps: layer(inp), (x, *layer.parameters()))


@pytest.mark.parametrize('backend', BACKENDS)
def test_every_parameter_gets_a_gradient(backend):
    layer = make_layer(12, dtype=torch.float32, backend=backend)
    layer(torch.randn(2, 3, 6, 9)).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_no_weight_decay_names_kernel_parameters():
    layer = SGConv2d(4, 8)
    names = dict(layer.named_parameters())
    assert layer.no_weight_decay() <= set(names)
    assert {n for n, p in names.items() if p.ndim > 1} <= layer.no_weight_decay()


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('amp_dtype', (torch.bfloat16, torch.float16))
def test_autocast_cpu(backend, amp_dtype):
    layer = make_layer(14, dtype=torch.float32, channels=8, backend=backend)
    x = torch.randn(2, 8, 14, 10, requires_grad=True)
    with torch.autocast('cpu', dtype=amp_dtype):
        out = layer(x)
    out.float().square().sum().backward()
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())
    reference = layer(x).double()
    if layer.resolve_backend(14, 10, x.device) == 'fft':
        # the FFT runs in float32 with autocast off inside: full float32 accuracy, not bf16/fp16's
        assert out.dtype == torch.float32 and rel_err(out.double(), reference) < 1e-5
    else:
        assert out.dtype == amp_dtype and rel_err(out.double(), reference) < 2e-2


@pytest.mark.parametrize('channels_last', (True, False))
@pytest.mark.parametrize('h,w,l_max', SHAPES)
def test_matmul_image_by_image_matches_direct_conv(monkeypatch, channels_last, h, w, l_max):
    # The image-by-image path normally starts at 2048 pixels; lower the bar so small maps take it too.
    monkeypatch.setattr(toeplitz, 'PER_IMAGE_MIN_PIXELS', 1)
    layer = make_layer(l_max, backend='matmul')
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
])
def test_bad_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        SGConv2d(**kwargs)


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
