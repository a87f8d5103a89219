#!/usr/bin/env python
"""Detection: Faster R-CNN on sgconvnext_atto and convnext_atto, the same recipe and budget, a few seeds.

    apt-get install dataset-fashion-mnist
    python studies/detection/detection_study.py --out output/detection --seeds 0 1 --steps 200 --eval-every 50 \\
        --plot docs/detection_curves.png --write docs/RESULTS.md

Steps (studies/study_runner.py: one command each, skipped when done, --jobs at a time, one thread each): one
``detection_run.py`` (beside this file) per --seeds x --models, seed-major (so a study cut short has both models of
the first seeds), every one with the same flags but --model and --seed. A run counts as done when its
``summary.json`` exists.

The report: ``OUT/results.json`` (per run: final COCO AP / AP50, steps, steps/s, seconds, and the curves: loss
per --log-every steps, metrics per evaluation), ``OUT/results.md`` (the table, mean ± sd over seeds), --plot (AP
and AP50 against step, and the training loss: a line per run, a colour per model; needs matplotlib) and the
section ``detection-study`` of --write. ``--from-results PATH`` redraws the table and the plot from a saved
results.json without running anything.
"""
import argparse
import csv
import json
import os
import sys

_STUDIES = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [_STUDIES, os.path.join(os.path.dirname(_STUDIES), 'tools'), os.path.dirname(_STUDIES)]  # + checkout
from bench.utils import write_section  # noqa: E402
from study_runner import Steps, mean_sd  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = 'detection-study'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default='output/detection', help='folder for the runs, results.*, commands.txt, logs/')
    p.add_argument('--models', nargs='+', default=['sgconvnext_atto', 'convnext_atto'])
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1])
    p.add_argument('--steps', type=int, default=200)
    p.add_argument('--eval-every', type=int, default=50)
    p.add_argument('--lr', type=float, default=4e-4)
    p.add_argument('--val-count', type=int, default=200)
    p.add_argument('--run-flags', nargs=argparse.REMAINDER, default=[],
                   help='more detection_run.py flags for every run (last on the line), e.g. --min-side 64')
    p.add_argument('--jobs', type=int, default=1, help='runs at a time (default: 1)')
    p.add_argument('--plot', metavar='PNG', help='draw the curves here (needs matplotlib)')
    p.add_argument('--write', metavar='PATH', help='also write the table into this markdown file')
    p.add_argument('--from-results', metavar='JSON', help='only redraw the table / --plot from this results.json')
    p.add_argument('--dry-run', action='store_true', help='print the commands only')
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f'--jobs must be >= 1, got {args.jobs}')
    if args.from_results and not os.path.isfile(args.from_results):
        p.error(f'--from-results {args.from_results} is not a file')
    return args


def run_name(model: str, seed: int) -> str:
    return f'{model}-seed{seed}'


def run_command(args, model: str, seed: int) -> list:
    return [os.path.join(HERE, 'detection_run.py'), '--model', model, '--seed', str(seed), '--steps', str(args.steps),
            '--eval-every', str(args.eval_every), '--lr', str(args.lr), '--val-count', str(args.val_count),
            '--out', os.path.join(args.out, run_name(model, seed)), *args.run_flags]


def _rows(path: str) -> list:
    with open(path, newline='') as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def collect(args) -> list:
    """Every finished run's summary (without its args) and curves, in --models x --seeds order."""
    runs = []
    for model in args.models:
        for seed in args.seeds:
            folder = os.path.join(args.out, run_name(model, seed))
            if not os.path.exists(os.path.join(folder, 'summary.json')):
                continue
            with open(os.path.join(folder, 'summary.json')) as f:
                summary = json.load(f)
            summary.pop('args', None)
            train = _rows(os.path.join(folder, 'train.csv'))
            evals = _rows(os.path.join(folder, 'eval.csv'))
            summary['curves'] = dict(step=[r['step'] for r in train], loss=[r['loss'] for r in train],
                                     eval_step=[r['step'] for r in evals], AP=[r['AP'] for r in evals],
                                     AP50=[r['AP50'] for r in evals])
            runs.append(summary)
    return runs


def table(runs: list) -> str:
    """A row per run, then a mean ± sd row per model (the markdown of results.md)."""
    lines = ['| model | seed | COCO AP | AP50 | AP75 | steps (batch) | steps/s | train s | eval s | wall s |',
             '|---|---|---|---|---|---|---|---|---|---|']
    for r in runs:
        lines.append(f"| {r['model']} | {r['seed']} | {r['AP']:.2f} | {r['AP50']:.2f} | {r['AP75']:.2f} | "
                     f"{r['steps']} ({r['batch_size']}) | {r['steps_per_s']:.3f} | {r['train_s']:.0f} | "
                     f"{r['eval_s']:.0f} | {r['wall_s']:.0f} |")
    for model in dict.fromkeys(r['model'] for r in runs):
        mine = [r for r in runs if r['model'] == model]
        cells = [mean_sd([r[k] for r in mine]) for k in ('AP', 'AP50', 'AP75')]
        lines.append(f"| **{model}** | mean of {len(mine)} | {' | '.join(cells)} | | "
                     f"{mean_sd([r['steps_per_s'] for r in mine], 3)} | | | |")
    return '\n'.join(lines)


def plot(runs: list, path: str) -> None:
    """AP and AP50 against step (left, middle) and the training loss (right): a line per run, a colour per model."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from sgconvnext_cli import atomic_open
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colours = {m: f'C{i}' for i, m in enumerate(dict.fromkeys(r['model'] for r in runs))}
    styles = ('-', '--', ':', '-.')
    for r in runs:
        c, style = r['curves'], styles[sorted({x['seed'] for x in runs}).index(r['seed']) % len(styles)]
        label = f"{r['model']} seed {r['seed']}"
        for ax, key in zip(axes[:2], ('AP', 'AP50')):
            ax.plot(c['eval_step'], c[key], style, marker='o', color=colours[r['model']], label=label)
        axes[2].plot(c['step'], c['loss'], style, color=colours[r['model']], label=label)
    for ax, title in zip(axes, ('COCO AP (0.5:0.95), validation', 'AP50, validation', 'training loss (sum of 4)')):
        ax.set_title(title)
        ax.set_xlabel('step')
        ax.grid(alpha=0.3)
    axes[2].set_yscale('log')
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic_open(path, 'wb') as f:
        fig.savefig(f, format='png', dpi=90)
    plt.close(fig)


def render(runs: list, args) -> str:
    text = table(runs)
    print(text)
    if args.plot and runs:
        plot(runs, args.plot)
    if args.write:
        write_section(args.write, KEY, text)
    return text


def report(args) -> list:
    runs = collect(args)
    with open(os.path.join(args.out, 'results.json'), 'w') as f:
        json.dump(runs, f, indent=1)
    with open(os.path.join(args.out, 'results.md'), 'w') as f:
        f.write(render(runs, args) + '\n')
    return runs


def main(argv=None):
    args = parse_args(argv)
    if args.from_results:
        with open(args.from_results) as f:
            return render(json.load(f), args)
    steps = Steps(args.out, args.jobs, args.dry_run, prog='detection_study.py')
    futures = [steps.run(run_name(model, seed), run_command(args, model, seed),
                         os.path.join(args.out, run_name(model, seed), 'summary.json'))
               for seed in args.seeds for model in args.models]
    for future in futures:
        future.result()
    if not args.dry_run:
        return report(args)


if __name__ == '__main__':
    main()
