#!/usr/bin/env python
"""Pathfinder: the same training budget for each model, at each image size and difficulty, over several seeds.

    python studies/pathfinder/pathfinder_study.py --data-root data/pathfinder --out output/pathfinder --sizes 64 128 \\
        --difficulties medium hard --seeds 0 1 --epochs 64=10 128=4 --write docs/RESULTS.md

Steps (studies/study_runner.py: one command each, skipped when done, --jobs at a time, one thread each):

1. ``make_pathfinder.py`` (beside this file) writes one data set per (size, difficulty): --train / --val images,
   --data-seed.
2. ``train_imagenet.py`` trains every --models x --seeds on it with the same flags (TRAIN_FLAGS plus --lr,
   --epochs for that size, --model-kwargs for that model); ``--resume auto`` continues an interrupted run.
3. The report: final and best eval top-1 per model (mean ± sd over seeds), seconds per epoch (median over the
   run's epochs, from its log), and a learning-curve PNG per setting by ``tools/plot_runs.py`` (when matplotlib is
   installed) in --plots. ``OUT/results.json`` holds every number, ``OUT/results.md`` the table.

A model entry may carry model kwargs after a colon: ``convnext_atto:kernel_sizes=15`` (a larger local kernel).
A difficulty entry may carry make_pathfinder.py knobs the same way: ``easy:dashes=4,distractors=1`` is the easy
preset with 4 dashes per curve and 1 distractor (data set ``pf{size}_easy-dashes4-distractors1``).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys

_STUDIES = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [_STUDIES, os.path.join(os.path.dirname(_STUDIES), 'tools')]  # study_runner; the user tools
from bench.utils import split_model_entry, write_section  # noqa: E402
from pathfinder import PRESETS  # noqa: E402
from study_runner import ROOT, Steps, finished, mean_sd, summary_rows  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

TRAIN_FLAGS = ['--num-classes', '2', '--opt', 'adamw', '--weight-decay', '0.05', '--sched', 'cosine',
               '--sched-on-updates', '--warmup-epochs', '1', '--scale', '1', '1', '--ratio', '1', '1', '--hflip', '0.5',
               '--vflip', '0.5', '--color-jitter', '0', '--smoothing', '0', '--crop-pct', '1.0', '-b', '64', '-j', '1',
               '--device', 'cpu', '--checkpoint-hist', '1', '--log-interval', '50']


KNOBS = tuple(next(iter(PRESETS.values())))  # dashes, dash_length, ...: make_pathfinder.py's --dashes, --dash-length


def _difficulty(text: str):
    """'easy:dashes=4,distractors=1' -> (tag 'easy-dashes4-distractors1', 'easy', ['--dashes', '4', ...])."""
    preset, _, knobs = text.partition(':')
    if preset not in PRESETS:
        raise argparse.ArgumentTypeError(f'expected a preset ({", ".join(PRESETS)}) optionally followed by '
                                         f':KNOB=VALUE,..., got {text!r}')
    tag, flags = preset, []
    for pair in filter(None, knobs.split(',')):
        key, sep, value = pair.partition('=')
        if not sep or key not in KNOBS or not re.fullmatch(r'\d+(\.\d+)?', value):
            raise argparse.ArgumentTypeError(f'expected KNOB=NUMBER with KNOB one of {", ".join(KNOBS)}, '
                                             f'got {pair!r} in {text!r}')
        tag += f'-{key.replace("_", "")}{value}'
        flags += ['--' + key.replace('_', '-'), value]
    return tag, preset, flags


def _size_epochs(text: str):
    size, sep, epochs = text.partition('=')
    if not sep or not size.isdigit() or not epochs.isdigit() or int(epochs) < 1:
        raise argparse.ArgumentTypeError(f'expected SIZE=EPOCHS such as 64=10, got {text!r}')
    return int(size), int(epochs)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data-root', required=True, help='folder for the data sets (pf{size}_{difficulty}/)')
    p.add_argument('--out', required=True, help='folder for the runs, logs, results.json, results.md')
    p.add_argument('--models', nargs='+', default=['sgconvnext_atto', 'convnext_atto'],
                   help='timm model names, each optionally NAME:KEY=VALUE,KEY=VALUE (model kwargs)')
    p.add_argument('--sizes', nargs='+', type=int, default=[64, 128])
    p.add_argument('--difficulties', nargs='+', type=_difficulty, default=[_difficulty('medium'), _difficulty('hard')],
                   metavar='PRESET[:K=V]',
                   help='presets, each optionally PRESET:KNOB=VALUE,... (default: medium hard)')
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1])
    p.add_argument('--epochs', nargs='+', type=_size_epochs, default=[(64, 10), (128, 4)], metavar='SIZE=EPOCHS')
    p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--train', type=int, default=10000, help='training images per data set (default 10000)')
    p.add_argument('--val', type=int, default=2000, help='validation images per data set (default 2000)')
    p.add_argument('--data-seed', type=int, default=0)
    p.add_argument('--jobs', type=int, default=2)
    p.add_argument('--plots', default=None, help='folder for the learning-curve PNGs (default: OUT)')
    p.add_argument('--write', metavar='PATH', help='also write the table into this markdown file')
    p.add_argument('--section', default='pathfinder-study', help='section key in --write')
    p.add_argument('--dry-run', action='store_true')
    args = p.parse_args(argv)
    args.epochs = dict(args.epochs)
    missing = [s for s in args.sizes if s not in args.epochs]
    if missing:
        p.error(f'--epochs gives no epoch count for size {missing[0]} (expected SIZE=EPOCHS for every --sizes)')
    for entry in args.models:
        try:
            split_model_entry(entry)
        except ValueError as e:
            p.error(f'--models: {e}')
    args.plots = args.plots or args.out
    return args


def model_spec(entry: str):
    """'name:k=v,k2=v2' -> (name, ['k=v', 'k2=v2'], a tag for run names)."""
    name, pairs = split_model_entry(entry)
    tag = name + ''.join('-' + re.sub(r'[^\w.]+', '', kv) for kv in pairs)
    return name, pairs, tag


def run_name(tag: str, size: int, difficulty: str, seed: int) -> str:
    return f'{tag}-pf{size}-{difficulty}-seed{seed}'


def main(argv=None):
    args = parse_args(argv)
    steps = Steps(args.out, args.jobs, args.dry_run, prog='pathfinder_study.py')
    data = {}
    for size in args.sizes:
        for difficulty, preset, knobs in args.difficulties:
            folder = os.path.join(args.data_root, f'pf{size}_{difficulty}')
            data[size, difficulty] = folder, steps.run(
                f'data-pf{size}-{difficulty}',
                [os.path.join(HERE, 'make_pathfinder.py'), '--out', folder, '--img-size', str(size),
                 '--train', str(args.train), '--val', str(args.val), '--seed', str(args.data_seed),
                 '--difficulty', preset, *knobs, '--workers', '1', '--quiet'],
                os.path.join(folder, 'pathfinder.json'))
    runs = []
    for (size, difficulty), (folder, made) in data.items():
        made.result()
        for entry in args.models:
            name, kwargs, tag = model_spec(entry)
            for seed in args.seeds:
                run = run_name(tag, size, difficulty, seed)
                command = [os.path.join(ROOT, 'train_imagenet.py'), '--data-dir', folder, '--model', name,
                           '--img-size', str(size), '--seed', str(seed), *TRAIN_FLAGS, '--lr', str(args.lr),
                           '--epochs', str(args.epochs[size]), '--output', args.out, '--experiment', run,
                           '--resume', 'auto', *(['--model-kwargs', *kwargs] if kwargs else [])]
                run_dir = os.path.join(args.out, run)
                runs.append(steps.run(run, command, os.path.join(run_dir, 'summary.csv'),
                                      done=lambda d=run_dir, e=args.epochs[size]: finished(d, e)))
    for future in runs:
        future.result()
    if not args.dry_run:
        report(args)


def epoch_seconds(log_path: str) -> list:
    """Seconds per epoch from a training log ("Epoch N done in Xs (train Ys)": the whole epoch, eval included)."""
    if not os.path.exists(log_path):
        return []
    with open(log_path) as f:
        return [float(m.group(1)) for m in re.finditer(r'Epoch \d+ done in ([\d.]+)s', f.read())]


def report(args):
    results, lines = [], []
    lines += ['| size | difficulty | model | final top-1 | best top-1 | per seed (final) | s / epoch |',
              '|---|---|---|---|---|---|---|']
    for size in args.sizes:
        for difficulty, _, _ in args.difficulties:
            plot_dirs, plot_labels = [], []
            for entry in args.models:
                _, _, tag = model_spec(entry)
                finals, bests, seconds = [], [], []
                for seed in args.seeds:
                    run = run_name(tag, size, difficulty, seed)
                    rows = summary_rows(os.path.join(args.out, run))
                    if not rows:
                        continue
                    finals.append(rows[-1]['eval_top1'])
                    bests.append(max(r['eval_top1'] for r in rows))
                    seconds += epoch_seconds(os.path.join(args.out, 'logs', f'{run}.log'))
                    plot_dirs.append(os.path.join(args.out, run))
                    plot_labels.append(tag)
                    results.append(dict(size=size, difficulty=difficulty, model=tag, seed=seed, epochs=len(rows),
                                        final_top1=finals[-1], best_top1=bests[-1],
                                        top1_per_epoch=[r['eval_top1'] for r in rows],
                                        train_loss_per_epoch=[r['train_loss'] for r in rows]))
                per_seed = ', '.join(f'{v:.1f}' for v in finals)
                lines.append(f'| {size} | {difficulty} | {tag} | {mean_sd(finals, 1)} | {mean_sd(bests, 1)} | {per_seed} | '
                             f'{statistics.median(seconds):.0f} |' if seconds else
                             f'| {size} | {difficulty} | {tag} | {mean_sd(finals, 1)} | {mean_sd(bests, 1)} | {per_seed} | - |')
            if plot_dirs:
                plot = os.path.join(args.plots, f'pathfinder_curves_{size}_{difficulty}.png')
                proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'plot_runs.py'), *plot_dirs,
                                       '--out', plot, '--labels', *plot_labels,
                                       '--title', f'Pathfinder {size} px, {difficulty}'],
                                      cwd=ROOT, capture_output=True, text=True)
                print(f'{plot}: ' + ('written' if proc.returncode == 0 else proc.stderr.strip()), file=sys.stderr)
    with open(os.path.join(args.out, 'results.json'), 'w') as f:
        json.dump(results, f, indent=2)
    text = '\n'.join(lines)
    with open(os.path.join(args.out, 'results.md'), 'w') as f:
        f.write(text + '\n')
    print(text)
    if args.write:
        write_section(args.write, args.section, text)


if __name__ == '__main__':
    main()
