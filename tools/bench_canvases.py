#!/usr/bin/env python
"""auto on detection canvases it never saw: tuned at one canvas, run at others (no retuning), against the best backend.

    python tools/bench_canvases.py --threads 1 --write docs/BENCHMARKS.md

Each SGConv2d of sgconvnext_tiny's four stages (channels 96..768, strides 4..32, batch 2, training: forward +
backward, NCHW as the tiny blocks pass it) is built as fpn_backbone builds it (fixed offsets, for a 1344 canvas)
and tuned once on the maps of ``--tune-canvas`` (sgconvnext.tune_backends). On each ``--canvases`` map, never tuned,
every backend is timed (the tuner's own timing) and compared with what the tuned layer runs there (the nearest
tuned map, ``sgconv.TUNED_SHAPE_REACH``) and with auto's untuned rules.
"""
import argparse
import datetime

import torch

from bench.utils import command_line, describe_machine, git_revision, log, write_section

from sgconvnext import SGConv2d, tune_backends  # noqa: E402
from sgconvnext.sgconv import choose_backend  # noqa: E402

STAGES = [(96, 4), (192, 8), (384, 16), (768, 32)]  # sgconvnext_tiny: (channels, stride)
CANVASES = ['1216x800', '800x1344', '1088x800', '800x1088', '1344x768', '1024x1024']  # WxH, as bench_dense.py


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--tune-canvas', default='1344x800', help='WxH canvas tuned on (default: 1344x800)')
    p.add_argument('--canvases', nargs='+', default=CANVASES, help='WxH canvases never tuned')
    p.add_argument('--batch-size', type=int, default=2)
    p.add_argument('--runs', type=int, default=3)
    p.add_argument('--threads', type=int, default=None)
    p.add_argument('--write', metavar='PATH', help='write the table into this markdown file')
    args = p.parse_args(argv)
    for text in [args.tune_canvas] + args.canvases:
        parts = text.split('x')
        if len(parts) != 2 or not all(s.isdigit() and int(s) > 0 for s in parts):
            p.error(f'canvases are WxH with positive ints, e.g. 1344x800, got {text!r}')
    if args.batch_size < 1 or args.runs < 1:
        p.error('--batch-size and --runs must be >= 1')
    return args


def canvas(text: str):
    """'WxH' -> (H, W)."""
    w, h = text.split('x')
    return int(h), int(w)


def timings(layer: SGConv2d, batch: int, h: int, w: int, runs: int) -> dict:
    """ms per backend for a training call on a (batch, C, h, w) map; tunes ``layer`` for it."""
    table = tune_backends(layer, torch.randn(batch, layer.dim, h, w), modes=('train',), warmup=1, runs=runs)
    return table['timings'][0]['ms']


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    th, tw = canvas(args.tune_canvas)
    rows = ['| canvas (WxH) | stage map (HxW, C) | fft ms | matmul ms | direct ms | best | tuned-nearest runs | its time / best '
            '| untuned auto runs | its time / best |', '|---' * 10 + '|']
    worst = 1.0
    for channels, stride in STAGES:
        tuned = SGConv2d(channels, 1344 // stride, resize='fixed')
        timings(tuned, args.batch_size, th // stride, tw // stride, args.runs)
        for text in args.canvases:
            h, w = (s // stride for s in canvas(text))
            log(f'timing {text} stage map {h}x{w} C={channels} ...')
            ms = timings(SGConv2d(channels, 1344 // stride, resize='fixed'), args.batch_size, h, w, args.runs)
            best = min(ms, key=ms.get)
            pick = tuned.resolve_backend(h, w, torch.device('cpu'), True, False, 'float32', args.batch_size)
            rule = choose_backend(h, w, torch.device('cpu'), True, False)
            worst = max(worst, ms[pick] / ms[best])
            cells = ' | '.join(f'{ms[b]:.1f}' if b in ms else '-' for b in ('fft', 'matmul', 'direct'))
            rule_ratio = f'{ms[rule] / ms[best]:.2f}' if rule in ms else '-'
            rows.append(f'| {text} | {h}x{w} ({channels}) | {cells} | {best} | {pick} | {ms[pick] / ms[best]:.2f} '
                        f'| {rule} | {rule_ratio} |')
            print(rows[-1], flush=True)
    report = '\n'.join([
        '### auto on detection canvases never tuned',
        '',
        f'- date: {datetime.date.today().isoformat()}, commit {git_revision()}',
        f'- machine: {describe_machine(torch.device("cpu"))}',
        f'- command: `{command_line()}`',
        f'- tuned once at {args.tune_canvas}; batch {args.batch_size}, training calls, median of {args.runs} runs '
        f'after 1 warm-up (the tuner\'s timing); worst tuned-nearest / best: {worst:.2f}',
        '',
        *rows,
    ])
    print(report)
    if args.write:
        write_section(args.write, 'bench_canvases:cpu', report)
        log(f'wrote {args.write}')


if __name__ == '__main__':
    main()
