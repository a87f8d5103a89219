"""Property-based tests of SGConv2d (hypothesis): any drawn layer and input, values and gradients against the float64
direct convolution of independently built kernels (tests/reference.py).

Drawn: batch, channels, height, width, l_max per axis, kernel_dim, decay, size policy, backend (the four, and
"tuned": auto with a tuned choice for exactly this call), dtype (float32, float64), memory format, which of x
and the parameters need gradients, and whether matmul's image-by-image path is taken. The number of examples comes from the hypothesis profile: ``ci`` (default,
derandomized so every CI run draws the same examples) or ``deep`` (HYPOTHESIS_PROFILE=deep, many more).
"""
import os

import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from reference import reference_sgconv
from sgconvnext import SGConv2d
from sgconvnext.sgconv import EXACT_BACKENDS, call_key, direct_is_safe, dtype_name
from sgconvnext import toeplitz
from sgconvnext.toeplitz import is_channels_last

settings.register_profile('ci', max_examples=300, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile('deep', max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'ci'))

sizes = st.integers(1, 14)


@st.composite
def cases(draw):
    # 32 and 33 channels: where the direct backend runs its convolutions on CPU (below, sgconv.direct_is_safe routes it)
    channels = st.one_of(st.integers(1, 5), st.sampled_from([32, 33]))
    case = dict(batch=draw(st.integers(1, 3)), channels=draw(channels), height=draw(sizes), width=draw(sizes),
                l_max=(draw(sizes), draw(sizes)), kernel_dim=draw(st.integers(1, 8)),
                decay=draw(st.floats(0.05, 1.0)), resize=draw(st.sampled_from(['stretch', 'fixed'])),
                backend=draw(st.sampled_from(['auto', 'fft', 'matmul', 'direct', 'tuned'])),
                dtype=draw(st.sampled_from([torch.float32, torch.float64])),
                channels_last=draw(st.booleans()), x_grad=draw(st.booleans()), param_grad=draw(st.booleans()),
                seed=draw(st.integers(0, 2 ** 16)))
    case['tuned'] = draw(st.sampled_from(EXACT_BACKENDS))  # used when backend is "tuned"
    # matmul runs image by image for channels_last batches of large maps: lower the threshold to draw that path too
    case['per_image_min_pixels'] = draw(st.sampled_from([toeplitz.PER_IMAGE_MIN_PIXELS, 1]))
    return case


def build(case):
    torch.manual_seed(case['seed'])
    layer = SGConv2d(case['channels'], case['l_max'], kernel_dim=case['kernel_dim'], decay=case['decay'],
                     backend='auto' if case['backend'] == 'tuned' else case['backend'], resize=case['resize'])
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(case['batch'], case['channels'], case['height'], case['width'], dtype=torch.float64)
    return layer.double(), x


@given(cases())
def test_any_layer_matches_the_float64_direct_convolution(case):
    threshold = toeplitz.PER_IMAGE_MIN_PIXELS
    toeplitz.PER_IMAGE_MIN_PIXELS = case['per_image_min_pixels']
    try:
        check(case)
    finally:
        toeplitz.PER_IMAGE_MIN_PIXELS = threshold


def check(case):
    layer64, x64 = build(case)
    layer = SGConv2d(case['channels'], case['l_max'], kernel_dim=case['kernel_dim'], decay=case['decay'],
                     backend=layer64.backend, resize=case['resize']).to(case['dtype'])
    layer.load_state_dict(layer64.state_dict())
    x = x64.to(case['dtype'])
    if case['channels_last']:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(case['x_grad'])
    for p in layer.parameters():
        p.requires_grad_(case['param_grad'])
    needs_grad = case['x_grad'] or case['param_grad']
    if case['backend'] == 'tuned':
        key = call_key(case['height'], case['width'], is_channels_last(x), dtype_name(case['dtype']), needs_grad,
                       'cpu', case['batch'])
        layer.tuned = {key: case['tuned']}
        expected_backend = case['tuned']
        if expected_backend == 'direct' and not direct_is_safe(case['channels'], 'cpu', dtype_name(case['dtype'])):
            expected_backend = 'matmul'  # the guard: a tuned direct below 32 channels runs matmul on CPU
    else:
        expected_backend = None
    out = layer(x)
    if expected_backend is not None:
        assert layer.resolve_backend(case['height'], case['width'], x.device, needs_grad, is_channels_last(x),
                                     dtype_name(case['dtype']), case['batch']) == expected_backend
    x_ref = x64.clone().requires_grad_(case['x_grad'])
    ref = reference_sgconv(layer64, x_ref)
    tol = 1e-10 if case['dtype'] == torch.float64 else 2e-5
    scale = ref.abs().max().clamp_min(1e-12)
    assert out.shape == x.shape and out.dtype == case['dtype']
    assert ((out.double() - ref).abs().max() / scale).item() < tol
    if not needs_grad:
        return
    torch.manual_seed(case['seed'] + 1)
    upstream = torch.randn(out.shape, dtype=torch.float64)
    ours = [t for t, on in [(x, case['x_grad'])] + [(p, case['param_grad']) for p in layer.parameters()] if on]
    theirs = [t for t, on in [(x_ref, case['x_grad'])] + [(p, case['param_grad']) for p in layer64.parameters()]
              if on]
    for g, g_ref in zip(torch.autograd.grad(out, ours, upstream.to(out.dtype)),
                        torch.autograd.grad(ref, theirs, upstream)):
        error = (g.double() - g_ref).abs().max() / g_ref.abs().max().clamp_min(1e-12)
        assert error.item() < (1e-9 if case['dtype'] == torch.float64 else 1e-4)
