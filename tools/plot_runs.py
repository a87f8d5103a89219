#!/usr/bin/env python
"""Learning curves of training runs as one picture: eval top-1 and train loss against epoch, a line per run.

    python tools/plot_runs.py output/train/sg_seed0 output/train/cn_seed0 --out curves.png
    python tools/plot_runs.py runs/* --out docs/pf64_hard.png --labels "sgconvnext s0" "convnext s0" --title "..."

Each RUN_DIR must hold the ``summary.csv`` that train_imagenet.py (or timm's train.py) writes: one row per epoch
with columns ``epoch``, ``train_loss``, ``eval_top1`` (and more, ignored). Left panel: eval top-1 (%) per epoch
(``--ema``: ``eval_ema_top1``, the EMA weights'); right panel: train loss. Lines are labelled with the run
folder's name, or with ``--labels`` (one per run; runs with the same label, e.g. the seeds of one setting,
share a colour and a legend entry). A markdown table of the runs (epochs, best and last top-1, last train
loss) goes to stdout.

Every input is checked before anything is drawn: a folder without summary.csv, an empty summary, a missing
column, a value that is not a finite number, or an epoch listed twice is a one-line error naming the file.
The picture (.png, .svg or .pdf, by the extension of --out) is written whole or not at all.

Needs matplotlib, an optional extra: ``pip install matplotlib`` or ``pip install .[plot]``.
"""
import argparse
import csv
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout: no pip install needed
from sgconvnext_cli import CLIError, OneLineErrorParser, atomic_open, run_cli  # noqa: E402  (no torch: see there)

FORMATS = ('png', 'svg', 'pdf')


def read_summary(run_dir: str, top1: str) -> dict:
    """{'epoch': [...], 'top1': [...], 'train_loss': [...]} of RUN_DIR/summary.csv, sorted by epoch."""
    path = os.path.join(run_dir, 'summary.csv')
    if not os.path.isdir(run_dir):
        raise CLIError(f'{run_dir} is not a folder; pass the run folders that hold summary.csv')
    if not os.path.isfile(path):
        raise CLIError(f'{run_dir} has no summary.csv; is it a training run folder (--output/--experiment)?')
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = reader.fieldnames or []
    if not rows:
        raise CLIError(f'{path} is empty: no epoch rows (did the run finish an epoch?)')
    for column in ('epoch', 'train_loss', top1):
        if column not in header:
            hint = ' (pass --ema only for runs with --model-ema)' if column.startswith('eval_ema') else (
                " (a run with --val-split '' has no eval columns)" if column.startswith('eval') else '')
            raise CLIError(f'{path} has no {column} column{hint}; its columns: {", ".join(header)}')
    out = {'epoch': [], 'top1': [], 'train_loss': []}
    for line, row in enumerate(rows, start=2):
        for column, key in (('epoch', 'epoch'), (top1, 'top1'), ('train_loss', 'train_loss')):
            text = (row.get(column) or '').strip()
            try:
                value = float(text)
            except ValueError:
                value = None
            if value is None or not math.isfinite(value):
                raise CLIError(f'{path} line {line}: {column} is {text!r}, not a finite number')
            out[key].append(value)
    epochs = out['epoch']
    if any(e != int(e) for e in epochs):
        raise CLIError(f'{path}: epochs must be whole numbers, got {epochs}')
    seen = set()
    for e in epochs:
        if e in seen:
            raise CLIError(f'{path} lists epoch {int(e)} twice (rows left over from a resumed run?); keep one row '
                           f'per epoch')
        seen.add(e)
    order = sorted(range(len(epochs)), key=epochs.__getitem__)
    return {key: [values[i] for i in order] for key, values in out.items()}


def summary_table(labels, run_dirs, runs, top1: str) -> str:
    lines = [f'| label | run | epochs | best {top1} (epoch) | last {top1} | last train_loss |',
             '|---|---|---|---|---|---|']
    for label, run_dir, run in zip(labels, run_dirs, runs):
        best = max(range(len(run['top1'])), key=run['top1'].__getitem__)
        lines.append(f'| {label} | {run_dir} | {len(run["epoch"])} | {run["top1"][best]:.2f} '
                     f'({int(run["epoch"][best])}) | {run["top1"][-1]:.2f} | {run["train_loss"][-1]:.4f} |')
    return '\n'.join(lines)


def draw(labels, runs, title: str, top1: str):
    """A matplotlib Figure with the two panels (no pyplot, so no display or global state is touched)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise CLIError('plot_runs.py needs matplotlib, an optional extra: pip install matplotlib '
                       '(or pip install .[plot], or pip install -r requirements-plot.txt)') from None
    fig = Figure(figsize=(11, 4.2), layout='constrained')
    acc, loss = fig.subplots(1, 2)
    colours = {}  # runs with the same label (seeds of one setting) share a colour and a legend entry
    for label, run in zip(labels, runs):
        style = dict(marker='o', markersize=3) if len(run['epoch']) <= 40 else {}
        first = label not in colours
        colours.setdefault(label, f'C{len(colours) % 10}')
        for ax, key in ((acc, 'top1'), (loss, 'train_loss')):
            ax.plot(run['epoch'], run[key], color=colours[label], label=label if first else None, **style)
    acc.set(xlabel='epoch', ylabel=f'{top1} (%)', title='eval top-1')
    loss.set(xlabel='epoch', ylabel='train_loss', title='train loss')
    for ax in (acc, loss):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    acc.legend(fontsize='small')
    if title:
        fig.suptitle(title)
    return fig


def parse_args(argv=None):
    p = OneLineErrorParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('runs', nargs='+', metavar='RUN_DIR', help='training run folders, each with a summary.csv')
    p.add_argument('--out', required=True, metavar='FILE', help='picture to write (.png, .svg or .pdf)')
    p.add_argument('--labels', nargs='+', metavar='LABEL', help='one label per run (default: the folder names)')
    p.add_argument('--title', default='', help='title above the two panels')
    p.add_argument('--ema', action='store_true', help='plot eval_ema_top1 (the EMA weights) instead of eval_top1')
    args = p.parse_args(argv)
    ext = os.path.splitext(args.out)[1].lower().lstrip('.')
    if ext not in FORMATS:
        raise CLIError(f'--out must end in .png, .svg or .pdf, got {args.out!r}')
    if args.labels is not None and len(args.labels) != len(args.runs):
        raise CLIError(f'--labels gives {len(args.labels)} labels for {len(args.runs)} runs; give one per run')
    args.format = ext
    return args


def default_labels(runs):
    names = [os.path.basename(os.path.normpath(r)) for r in runs]
    return names if len(set(names)) == len(names) else [os.path.normpath(r) for r in runs]


def main(argv=None):
    args = parse_args(argv)
    top1 = 'eval_ema_top1' if args.ema else 'eval_top1'
    runs = [read_summary(run, top1) for run in args.runs]  # every input checked before anything is drawn
    labels = args.labels or default_labels(args.runs)
    fig = draw(labels, runs, args.title, top1)
    with atomic_open(args.out, 'wb') as f:
        fig.savefig(f, format=args.format, dpi=120)
    print(summary_table(labels, args.runs, runs, top1))
    print(f'wrote {args.out}', file=sys.stderr)
    return args.out


if __name__ == '__main__':
    run_cli(main)
