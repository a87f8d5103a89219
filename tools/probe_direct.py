#!/usr/bin/env python
"""Does torch's depthwise convolution stall, crash or return wrong gradients on this CPU?

SGConv2d's "direct" backend is two depthwise convolutions through torch (oneDNN on CPU). On some CPUs (an AMD EPYC
with AVX512-BF16, torch 2.14.1) those never return for bf16 channels_last inputs with few channels, and their float32
weight gradient at one channel is wrong or crashes; SGConv2d does not run "direct" there
(``sgconvnext.sgconv.direct_is_safe``). This probes the raw calls, each under a time limit, one process at a time
(a stalled or crashed call is killed with its process and the next probe starts afresh):

    python tools/probe_direct.py                # every probe: the shapes seen to stall or fail, and their neighbours
    python tools/probe_direct.py --safe-only    # only what the guard lets "direct" run: all must be "ok"

Exit status 1 if any probe run was not "ok" (a stall, a crash or a wrong gradient), else 0.
"""
import argparse
import json
import os
import select
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (channels, (H, W), (kh, kw), dtype, layout, what): 'forward' times one call; 'grads' compares the input and weight
# gradients of float32 against float64.
STALL_PROBES = [(c, (32, 32), (1, 15), 'bfloat16', 'channels_last', 'forward') for c in (1, 4, 8, 16, 24, 32, 40, 64, 96)] \
    + [(8, (s, s), (1, 15), 'bfloat16', 'channels_last', 'forward') for s in (16, 28, 40, 56)] \
    + [(c, (32, 32), (1, 63), 'bfloat16', 'channels_last', 'forward') for c in (8, 40)] \
    + [(8, (32, 32), (1, 15), 'bfloat16', 'contiguous', 'forward'), (8, (32, 32), (1, 15), 'float32', 'channels_last',
                                                                       'forward'),
       (40, (56, 56), (1, 111), 'bfloat16', 'channels_last', 'forward'), (40, (56, 56), (111, 1), 'bfloat16',
                                                                          'channels_last', 'forward')]
GRAD_PROBES = [(c, (14, 13), k, 'float32', layout, 'grads') for c in (1, 8, 40) for k in ((1, 25), (27, 1))
               for layout in ('contiguous', 'channels_last')]
PROBES = STALL_PROBES + GRAD_PROBES
GRAD_TOLERANCE = 1e-4  # float32 against float64, relative to the largest entry


def run_probe(channels, size, kernel, dtype, layout, what):
    """One raw depthwise conv; its result as a dict (the worker prints it)."""
    import torch
    import torch.nn.functional as F
    torch.manual_seed(0)
    x = torch.randn(2, channels, *size, dtype=torch.float64)
    weight = torch.randn(channels, 1, *kernel, dtype=torch.float64)
    padding = (kernel[0] // 2, kernel[1] // 2)

    def conv(dt):
        xi = x.to(dt).requires_grad_(what == 'grads')
        if layout == 'channels_last':
            xi = xi.detach().contiguous(memory_format=torch.channels_last).requires_grad_(what == 'grads')
        wi = weight.to(dt).requires_grad_(what == 'grads')
        return xi, wi, F.conv2d(xi, wi, padding=padding, groups=channels)

    start = time.perf_counter()
    xi, wi, y = conv(getattr(torch, dtype))
    if what == 'forward':
        return dict(result='ok', ms=round(1e3 * (time.perf_counter() - start), 2))
    upstream = torch.randn(y.shape, dtype=torch.float64)
    grads = torch.autograd.grad(y, (xi, wi), upstream.to(y.dtype))
    x64, w64, y64 = conv(torch.float64)
    refs = torch.autograd.grad(y64, (x64, w64), upstream)
    error = max(((g.double() - r).abs().max() / r.abs().max().clamp_min(1e-30)).item() for g, r in zip(grads, refs))
    return dict(result='ok' if error < GRAD_TOLERANCE else 'wrong', error=float(f'{error:.3g}'))


def worker(indices):
    for i in indices:
        print(json.dumps(dict(start=i)), flush=True)
        print(json.dumps(dict(index=i, **run_probe(*PROBES[i]))), flush=True)


def probe_all(indices, limit):
    """{index: result dict}; a worker process runs the probes in order and is restarted after a stall or a crash."""
    results, todo = {}, list(indices)
    while todo:
        cmd = [sys.executable, os.path.abspath(__file__), '--worker', ','.join(map(str, todo))]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
        current, deadline = None, time.time() + limit + 30  # 30 s to import torch
        try:
            while todo:
                ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.time()))
                line = proc.stdout.readline() if ready else ''
                if not ready or line == '':  # a stall (time is up) or a crash (the pipe closed)
                    if current is None:
                        raise RuntimeError(f'probe_direct.py: error: the worker did not start ({proc.poll()})')
                    crashed = proc.poll() is not None and proc.returncode != 0
                    results[current] = dict(result=f'crashed (exit {proc.returncode})' if crashed else
                                            f'stalled (> {limit:g} s)')
                    todo.remove(current)
                    break
                message = json.loads(line)
                if 'start' in message:
                    current, deadline = message['start'], time.time() + limit
                else:
                    results[message.pop('index')] = message
                    todo.remove(current)
                    current = None
        finally:
            os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
            proc.wait()
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--safe-only', action='store_true', help='only the probes SGConv2d would run "direct" for')
    p.add_argument('--only', type=lambda v: [int(i) for i in v.split(',')], metavar='I,J,...',
                   help='run only these probes (0-based rows of the full table)')
    p.add_argument('--limit', type=float, default=20.0, help='seconds a probe may take (default 20)')
    p.add_argument('--worker', help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        return worker([int(i) for i in args.worker.split(',')])
    if not args.limit > 0:
        p.error(f'--limit must be a positive number of seconds, got {args.limit}')
    sys.path.insert(0, ROOT)
    from sgconvnext.sgconv import direct_is_safe
    if args.only is not None and not all(0 <= i < len(PROBES) for i in args.only):
        p.error(f'--only takes probe numbers 0 to {len(PROBES) - 1}, got {args.only}')
    indices = [i for i, (c, _, _, dtype, _, _) in enumerate(PROBES) if (args.only is None or i in args.only)
               and (not args.safe_only or direct_is_safe(c, 'cpu', dtype))]
    results = probe_all(indices, args.limit)
    print('| C | map | kernel | dtype | layout | checks | direct_is_safe | result |\n|---|---|---|---|---|---|---|---|')
    for i in indices:
        c, size, kernel, dtype, layout, what = PROBES[i]
        r = results[i]
        detail = f" ({r['ms']} ms)" if 'ms' in r else f" (relative error {r['error']:.3g})" if 'error' in r else ''
        print(f"| {c} | {size[0]}x{size[1]} | {kernel[0]}x{kernel[1]} | {dtype} | {layout} | {what} | "
              f"{direct_is_safe(c, 'cpu', dtype)} | {r['result']}{detail} |")
    return 1 if any(r['result'] != 'ok' for r in results.values()) else 0


if __name__ == '__main__':
    sys.exit(main())
