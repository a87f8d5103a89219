"""The "direct" guard (sgconv.direct_is_safe): on CPU, SGConv2d never hands torch's depthwise convolution a layer with
fewer than DIRECT_MIN_CHANNELS_CPU channels in float32 / bf16 / fp16 (it stalls or returns wrong gradients there on
some CPUs, tools/probe_direct.py), whether auto, a tuned table or backend="direct" asked for it; the result stays
exact. The shapes seen to stall run in subprocesses with a time limit."""
import os
import sys
import warnings

import pytest
import torch

import processes
from reference import reference_sgconv
from sgconvnext import SGConv2d, format_backend_table, sgconv, tune_backends
from sgconvnext.sgconv import DIRECT_MIN_CHANNELS_CPU, call_key, direct_is_safe

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = torch.device('cpu')


def test_the_guard_covers_cpu_low_precision_below_the_channel_bound():
    assert DIRECT_MIN_CHANNELS_CPU <= 40  # the models' smallest stage (atto's) still runs direct
    for channels in (1, 4, 8, 16, 24, DIRECT_MIN_CHANNELS_CPU - 1):  # 1-16: seen to stall or fail
        for dtype in ('float32', 'bfloat16', 'float16'):
            assert not direct_is_safe(channels, 'cpu', dtype)
        assert direct_is_safe(channels, 'cpu', 'float64')  # torch's own convolution, not oneDNN
        assert direct_is_safe(channels, 'cuda', 'bfloat16')
    assert direct_is_safe(DIRECT_MIN_CHANNELS_CPU, 'cpu', 'bfloat16') and direct_is_safe(96, 'cpu', 'float32')


@pytest.mark.parametrize('channels,routed', [(8, True), (1, True), (40, False)])
def test_every_way_of_asking_for_direct_is_routed_below_the_bound(channels, routed):
    expected = 'matmul' if routed else 'direct'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        explicit = SGConv2d(channels, 32, backend='direct')
    auto = SGConv2d(channels, 32)  # auto picks direct for channels_last inference on maps <= 64
    tuned = SGConv2d(channels, 32)
    tuned.tuned = {call_key(32, 32, True, 'bfloat16', True, 'cpu', 1): 'direct'}
    assert explicit.resolve_backend(32, 32, CPU, True, True, 'bfloat16') == expected
    assert auto.resolve_backend(32, 32, CPU, False, True, 'bfloat16') == expected
    assert tuned.resolve_backend(32, 32, CPU, True, True, 'bfloat16') == expected
    assert explicit.resolve_backend(32, 32, CPU, True, True, 'float64') == 'direct'
    assert explicit.resolve_backend(32, 32, torch.device('cuda'), True, True, 'bfloat16') == 'direct'


def test_a_routed_layer_never_calls_the_convolution_and_stays_exact(monkeypatch):
    def refuse(*args):
        raise AssertionError('direct_conv2d was called')
    monkeypatch.setattr(sgconv, 'direct_conv2d', refuse)
    monkeypatch.setattr(sgconv, '_warned', set())
    with pytest.warns(UserWarning, match=r'SGConv2d\(8, backend="direct"\) runs the "matmul" backend on CPU'):
        layer = SGConv2d(8, 16, backend='direct')
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # one warning per process, not one per layer
        SGConv2d(4, 16, backend='direct')
    x = torch.randn(2, 8, 16, 12).contiguous(memory_format=torch.channels_last).requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = layer(x)
    ref = reference_sgconv(layer.double(), x.double())
    assert ((out.double() - ref).abs().max() / ref.abs().max()).item() < 2 ** -8 * 8  # bf16's precision
    layer.float()
    with torch.no_grad():
        assert ((layer(x.float()).double() - ref).abs().max() / ref.abs().max()).item() < 1e-5


def test_the_tuner_does_not_time_direct_where_the_layer_would_not_run_it(monkeypatch):
    def refuse(*args):
        raise AssertionError('direct_conv2d was called')
    monkeypatch.setattr(sgconv, 'direct_conv2d', refuse)
    x = torch.randn(2, 8, 16, 16).contiguous(memory_format=torch.channels_last)
    table = tune_backends(torch.nn.Sequential(SGConv2d(8, 16), SGConv2d(8, 16)), x, runs=1)
    for entry in table['timings']:
        assert set(entry['ms']) == {'fft', 'matmul'} and entry['choice'] in ('fft', 'matmul')
        assert 'below 32 channels' in entry['not_timed']['direct']
    assert 'direct: not run on CPU below 32 channels' in format_backend_table(table)


def test_a_backend_that_does_not_return_in_time_is_dropped_and_the_tuner_returns(monkeypatch):
    import time
    real = sgconv.direct_conv2d

    def stalls(*args):
        time.sleep(3)
        return real(*args)
    monkeypatch.setattr(sgconv, 'direct_conv2d', stalls)
    model = torch.nn.Sequential(SGConv2d(40, 8), SGConv2d(40, 8))
    x = torch.randn(1, 40, 8, 8).contiguous(memory_format=torch.channels_last)
    start = time.perf_counter()
    with pytest.warns(UserWarning, match='direct dropped for 8x8/channels_last/float32/train/cpu/batch1'):
        table = tune_backends(model, x, runs=1, time_limit=0.5)
    assert time.perf_counter() - start < 2.5  # two calls (train, infer): each waits 0.5 s for direct, not 3
    for entry in table['timings']:
        assert entry['not_timed'] == {'direct': 'its first call did not return within 0.5 s'}
        assert entry['choice'] in ('fft', 'matmul') and set(entry['ms']) == {'fft', 'matmul'}
    with pytest.raises(ValueError, match='time_limit must be a positive number of seconds, got 0'):
        tune_backends(model, x, time_limit=0)


# The shapes of the every-CPU report through SGConv2d, every way of choosing the backend, values and gradients against
# float64, in a subprocess with a limit: a stall fails the test instead of hanging the suite.
STALL_SHAPES_SCRIPT = r'''
import sys, warnings
import torch
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2])
from reference import reference_sgconv
from sgconvnext import SGConv2d
from sgconvnext.sgconv import call_key
warnings.simplefilter('ignore')
torch.manual_seed(0)
BF16 = 2 ** -8 * 8  # eight of bf16's unit roundoffs, relative to the largest entry
# (channels, (H, W), l_max, kernel_dim, dtype, channels_last, autocast bf16): the reported stalls, then the gradients
cases = [(c, (32, 32), 32, 8, torch.float32, True, True) for c in (4, 8, 16)] + \
        [(8, (s, s), s, 8, torch.float32, True, True) for s in (40, 56)] + \
        [(1, (14, 13), (14, 13), 8, torch.float32, cl, False) for cl in (False, True)] + \
        [(1, (14, 13), (2, 3), 2, torch.float32, cl, False) for cl in (False, True)]
for channels, (h, w), l_max, kd, dtype, cl, amp in cases:
    layer64 = SGConv2d(channels, l_max, kernel_dim=kd).double()
    with torch.no_grad():
        layer64.bias.normal_()
    x64 = torch.randn(2, channels, h, w, dtype=torch.float64, requires_grad=True)
    ref = reference_sgconv(layer64, x64)  # once per case: the float64 direct convolution of a large kernel is slow
    upstream = torch.randn(ref.shape, dtype=torch.float64)
    refs = (ref,) + torch.autograd.grad(ref, [x64] + list(layer64.parameters()), upstream)
    for choice in ('auto', 'tuned', 'direct', 'fft', 'matmul'):
        print('case', channels, h, w, l_max, kd, cl, amp, choice, flush=True)
        layer = SGConv2d(channels, l_max, kernel_dim=kd, backend='auto' if choice == 'tuned' else choice)
        layer.load_state_dict(layer64.state_dict())
        x = x64.detach().float()
        x = (x.contiguous(memory_format=torch.channels_last) if cl else x).requires_grad_()
        compute = 'bfloat16' if amp else 'float32'
        if choice == 'tuned':
            layer.tuned = {call_key(h, w, cl and channels > 1, compute, g, 'cpu', 2): 'direct' for g in (True, False)}
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=amp):
            out = layer(x)
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=amp):
            layer(x)  # inference: auto's direct rule
        grads = torch.autograd.grad(out, [x] + list(layer.parameters()), upstream.to(out.dtype))
        tol = BF16 if amp else 1e-4
        for got, want in zip((out,) + grads, refs):
            error = ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()
            assert error < tol, (channels, h, w, choice, error)
print('all returned, exact', flush=True)
'''


@pytest.mark.slow
def test_the_reported_stall_and_gradient_shapes_return_exact_through_every_backend_choice():
    proc = processes.run([sys.executable, '-c', STALL_SHAPES_SCRIPT, ROOT, os.path.dirname(__file__)], timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0 and 'all returned, exact' in proc.stdout, proc.stdout[-1500:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_what_the_guard_lets_direct_run_returns_right_on_this_cpu():
    """The raw convolutions outside the guard, each in a killable process with a limit: a stall, crash or wrong
    gradient here means the guard is too narrow for this CPU."""
    proc = processes.run([sys.executable, os.path.join(ROOT, 'tools', 'probe_direct.py'), '--safe-only'], timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith('| ') and '| True |' in line]
    assert len(rows) >= 10 and all(line.rstrip().endswith('|') and '| ok' in line for line in rows)


def test_a_probe_past_its_limit_is_killed_and_reported():
    proc = processes.run([sys.executable, os.path.join(ROOT, 'tools', 'probe_direct.py'), '--only', '17',
                          '--limit', '0.01'], timeout=120)
    assert proc.returncode == 1 and 'stalled (> 0.01 s)' in proc.stdout, proc.stdout + proc.stderr
