#!/usr/bin/env python
"""Time SGConv2d (each backend and auto) against a 7x7 depthwise conv, forward + backward.

    python tools/bench_sgconv.py                       # ConvNeXt-T stage shapes and large maps, CPU
    python tools/bench_sgconv.py --channels-last       # inputs laid out as in timm's ConvNeXt blocks
    python tools/bench_sgconv.py --device cuda --amp bf16 --write docs/BENCHMARKS.md

All timings of one shape are interleaved in one process; each cell is the median of --runs calls after
--warmup calls. Ratios are to the 7x7 depthwise conv of the same shape (< 1 means faster).
"""
import argparse
import contextlib
import datetime

import torch
from torch import nn

from bench.utils import command_line, describe_machine, git_revision, interleaved_medians, log, write_section

from sgconvnext import SGConv2d  # noqa: E402

STAGE_SHAPES = [(16, 96, 56), (16, 192, 28), (16, 384, 14), (16, 768, 7)]  # ConvNeXt-T, batch 16
LARGE_SIZES = [128, 256, 512]
BACKENDS_TIMED = ('fft', 'matmul', 'direct')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cpu', help='cpu or cuda (default: cpu)')
    p.add_argument('--amp', choices=('none', 'bf16', 'fp16'), default='none', help='autocast dtype')
    p.add_argument('--large', type=int, nargs='*', default=LARGE_SIZES, help='large square map sizes (C=64, B=1)')
    p.add_argument('--large-channels', type=int, default=64)
    p.add_argument('--no-stages', action='store_true', help='skip the ConvNeXt-T stage shapes')
    p.add_argument('--channels-last', action='store_true', help='channels_last inputs (what ConvNeXt blocks pass on)')
    p.add_argument('--backends', nargs='+', choices=BACKENDS_TIMED, default=list(BACKENDS_TIMED),
                   help='SGConv2d backends to time besides auto (default: all)')
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--runs', type=int, default=5)
    p.add_argument('--write', metavar='PATH', help='write the table into this markdown file (e.g. docs/BENCHMARKS.md)')
    args = p.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        p.error(f'--runs must be >= 1 and --warmup >= 0, got {args.runs} and {args.warmup}')
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        p.error('--device cuda was asked for but torch.cuda.is_available() is False')
    return args


def time_shape(batch, channels, size, device, amp_dtype, channels_last, backends, warmup, runs):
    x = torch.randn(batch, channels, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    # A dense upstream gradient in the input's layout, as a network's next layer hands back (out.sum()
    # would give a stride-0 gradient that no real network produces and that some kernels special-case).
    grad = torch.randn_like(x)
    layers = {'dwconv7x7': nn.Conv2d(channels, channels, 7, padding=3, groups=channels)}
    for backend in (*backends, 'auto'):
        layers[backend] = SGConv2d(channels, size, backend=backend)
    autocast = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())

    def step(layer):
        layer.to(device)

        def run():
            with autocast:
                out = layer(x)
            out.float().backward(grad)
        return run

    medians = interleaved_medians({name: step(layer) for name, layer in layers.items()}, device, warmup, runs)
    auto_pick = layers['auto'].resolve_backend(size, size, device, needs_grad=True, channels_last=channels_last)
    return medians, auto_pick


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    amp_dtype = {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}[args.amp]
    shapes = ([] if args.no_stages else STAGE_SHAPES) + [(1, args.large_channels, s) for s in args.large]
    backends = args.backends
    rows = ['| B | C | H=W | 7x7 dw (ms) | ' + ' | '.join(f'{b} (ms)' for b in backends) +
            ' | auto (ms) | auto picks | fastest | ' + ' | '.join(f'{b} / 7x7' for b in backends) + ' | auto / 7x7 |',
            '|---' * (8 + 2 * len(backends)) + '|']
    wrong_picks = []
    for batch, channels, size in shapes:
        log(f'timing B={batch} C={channels} H=W={size} ...')
        t, pick = time_shape(batch, channels, size, device, amp_dtype, args.channels_last, backends,
                             args.warmup, args.runs)
        fastest = min(backends, key=t.get)
        if pick != fastest:
            wrong_picks.append(size)
        base = t['dwconv7x7']
        rows.append(f"| {batch} | {channels} | {size} | {base * 1e3:.1f} | " +
                    ' | '.join(f'{t[b] * 1e3:.1f}' for b in backends) +
                    f" | {t['auto'] * 1e3:.1f} | {pick} | {fastest} | " +
                    ' | '.join(f'{t[b] / base:.2f}' for b in backends) + f" | {t['auto'] / base:.2f} |")
        print(rows[-1], flush=True)
    precision = 'fp32' if amp_dtype is None else f'{args.amp} autocast'
    layout = 'channels_last' if args.channels_last else 'NCHW'
    report = '\n'.join([
        f'### SGConv2d vs 7x7 depthwise conv, forward + backward, {args.device}, {precision}, {layout} input',
        '',
        f'- date: {datetime.date.today().isoformat()}, commit {git_revision()}',
        f'- machine: {describe_machine(device)}',
        f'- command: `{command_line()}`',
        f'- median of {args.runs} interleaved runs after {args.warmup} warm-up runs; ratio < 1 is faster than 7x7',
        '',
        *rows,
    ])
    print(report)
    if wrong_picks:
        log(f'note: auto did not pick the fastest backend at H=W={wrong_picks}')
    if args.write:
        write_section(args.write, f'bench_sgconv:{args.device}:{precision}:{layout}', report)
        log(f'wrote {args.write}')


if __name__ == '__main__':
    main()
