"""The markdown report of tools/benchmark.py: a table of models by image size, ratios to the first model of each
group, the auto backend per stage, and the conditions of the run (date, commit, machine, command, load)."""
import datetime

import torch

from .utils import command_line, describe_machine, git_revision

NOISY_SPREAD = 0.2  # (max - min) / median of the timed steps above which a timing is flagged as noisy


def _rate(value: float) -> str:
    """Three significant digits without exponents: 1234, 109, 10.1, 3.25, 0.412."""
    value = float(f'{value:.3g}')
    return f'{value:.0f}' if value >= 100 else f'{value:.1f}' if value >= 10 else f'{value:.2f}' if value >= 1 \
        else f'{value:.3f}'


COLUMNS = [  # (row key, header, format, bench that measures it)
    ('params_m', 'params (M)', '{:.2f}', None),
    ('gmacs', 'GMACs', '{:.3f}', 'flops'),
    ('gmacs_train', 'GMACs train', '{:.3f}', 'flops'),
    ('mixer_gmacs', 'mixer GMACs', '{:.3f}', 'flops'),
    ('activations_m', 'act. (M)', '{:.2f}', 'flops'),
    ('infer_img_s', 'infer img/s', _rate, 'infer'),
    ('train_img_s', 'train img/s', _rate, 'train'),
    ('infer_peak_mb', 'infer peak MiB', '{:.0f}', 'infer'),
    ('train_peak_mb', 'train peak MiB', '{:.0f}', 'train'),
]


def _cell(row, first, key, fmt) -> str:
    value, base = row.get(key), first.get(key)
    if value is None:
        return 'n/a'
    ratio = f' ({value / base:.2f})' if base else ''
    return (fmt(value) if callable(fmt) else fmt.format(value)) + ratio


def format_table(rows: list, benches: list) -> list:
    """Markdown lines: one row per (image size, model), ratios to the first model of that size."""
    columns = [c for c in COLUMNS if c[3] is None or c[3] in benches]
    if not any(r.get('mixer_gmacs') is not None for r in rows):
        columns = [c for c in columns if c[0] != 'mixer_gmacs']
    lines = ['| img | model | ' + ' | '.join(c[1] for c in columns) + ' |',
             '|---|---|' + '---|' * len(columns)]
    firsts = {}
    for row in rows:
        first = firsts.setdefault((row['img_size'], row.get('group', 0)), row)
        cells = [_cell(row, first, key, fmt) for key, _, fmt, _ in columns]
        lines.append(f"| {row['img_size']} | {row['model']} | " + ' | '.join(cells) + ' |')
    return lines


def format_backends(rows: list) -> list:
    """Markdown lines: which backend SGConv2d's "auto" runs at each stage (tuned or by its rules), inference /
    training."""
    rows = [r for r in rows if r['auto_backends']]
    if not rows:
        return []
    n = max(len(r['auto_backends']) for r in rows)
    lines = ['| img | model | ' + ' | '.join(f'stage {i}: map (kernels built for, policy), infer / train'
                                             for i in range(n)) + ' |',
             '|---|---|' + '---|' * n]

    def kernel(s):
        return '' if s['built'] == s['map'] else f" ({s['built'][0]}x{s['built'][1]}, {s['resize']})"

    for r in rows:
        cells = [f"{s['map'][0]}x{s['map'][1]}{kernel(s)}: {s['infer']} / {s['train']}" for s in r['auto_backends']]
        lines.append(f"| {r['img_size']} | {r['model']} | " + ' | '.join(cells + [''] * (n - len(cells))) + ' |')
    return lines


def noisy_timings(rows: list) -> list:
    return [f"{r['model']} {r['img_size']}px {mode} ({r[f'{mode}_spread']:.0%})"
            for r in rows for mode in ('infer', 'train') if r.get(f'{mode}_spread', 0) > NOISY_SPREAD]


def make_report(rows: list, args, device: torch.device, load: tuple) -> str:
    precision = 'fp32' if args.amp == 'none' else f'{args.amp} autocast'
    timed = [b for b in ('infer', 'train') if b in args.bench]
    kwargs = ' '.join(f'{k}={v}' for k, v in args.model_kwargs.items())
    lines = [
        f'### {" | ".join(", ".join(g) for g in args.groups)}{f" ({kwargs})" if kwargs else ""}: {", ".join(args.bench)}, {device.type}, {precision}',
        '',
        f'- date: {datetime.date.today().isoformat()}, commit {git_revision()}',
        f'- machine: {describe_machine(device)}',
        f'- command: `{command_line()}`',
        *([f'- models built for {args.build_size} px, run at each size (SGConvNeXt kernels: see the backend table)']
          if args.build_size else []),
        '- GMACs per image at batch 1, fvcore with FFTs and complex products counted (`sgconvnext.flops`); '
        '"GMACs" is the inference forward, "GMACs train" the forward as run in training (they differ where '
        "SGConv2d's auto backend picks differently); mixer = the blocks' `conv_dw`",
    ]
    if timed:
        lines.append(f'- img/s at batch {args.batch_size}: median of {args.steps} timed steps after {args.warmup} '
                     f'warm-up steps, models interleaved step by step'
                     + (', channels_last' if args.channels_last else '') + (', torch.compile' if args.compile else '')
                     + f'; load average before / after: {load[0]:.2f} / {load[1]:.2f}')
        lines.append('- peak MiB: one more step per model after the timed ones, parameters, gradients and optimizer state '
                     'included: ' + ("CUDA's max_memory_allocated" if device.type == 'cuda' else
                                     "the live tensor bytes PyTorch's MemTracker counts (tools/bench/memory.py)"))
        if getattr(args, 'sg_tune', False):
            lines.append('- SGConv2d backends tuned on this device (`--sg-tune`, `sgconvnext.tune_backends`) before '
                         'the FLOPs, the backend table and the timing; tables below')
        noisy = noisy_timings(rows)
        if noisy:
            lines.append(f'- noisy: (max - min) / median of the timed steps above {NOISY_SPREAD:.0%} for '
                         + ', '.join(noisy) + ' (the machine was shared; read those timings with care)')
    lines += ['- in parentheses: ratio to the first model ' + ('of its group ' if len(args.groups) > 1 else '')
              + 'at the same image size', '', *format_table(rows, args.bench)]
    for row in rows:
        if row.get('sg_tuned'):
            lines += ['', f"{row['model']} at {row['img_size']} px: {row['sg_tuned']}"]
    backends = format_backends(rows)
    if backends:
        chosen = ('the backend run for inference / training, as tuned by `--sg-tune`' if getattr(args, 'sg_tune', False)
                  else '`auto` backend for inference / training')
        lines += ['', 'SGConv2d per stage: map size (where the kernels were built for another size: that size and the '
                  f'size policy), {chosen}:', '', *backends]
    return '\n'.join(lines)
