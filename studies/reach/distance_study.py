#!/usr/bin/env python
"""The distance sweep: target-pixel accuracy against the distance d to the cue, for each model, with a control.

    apt-get install dataset-fashion-mnist
    python studies/reach/distance_study.py --out output/reach/distance --distances 32 64 96 --seeds 0 1 \\
        --plot docs/distance_sweep.png --erf-plot docs/erf_distance.png --write docs/RESULTS.md

Steps (studies/study_runner.py: one command each, skipped when done, --jobs at a time, one thread each): one
``distance_run.py`` (beside this file) per --seeds x --distances x --models, seed-major (each seed's shortest
and longest distance first), every one with the same
flags but --model, --distance and --seed; the control (``local_cnn``, which sees only 17 px around each pixel) at
each distance for the first seed. A run counts as done when its ``summary.json`` exists.

The report: ``OUT/results.json`` (per run: final target-pixel and background accuracy, seconds; and
the ERF of its trained model: RepLKNet's area ratios of the gradient of the centre pixel's output, over
--erf-images validation canvases, ``tools/erf.py``), ``OUT/results.md`` (the tables, mean ± sd over seeds),
--plot (accuracy against d, a line per model, the seeds as points; needs matplotlib), --erf-plot (the ERF maps of
each model at the longest distance, first seed) and the section ``distance-study`` of --write.
"""
import argparse
import csv
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
_STUDIES = os.path.dirname(HERE)
sys.path[:0] = [_STUDIES, os.path.join(os.path.dirname(_STUDIES), 'tools'), os.path.dirname(_STUDIES), HERE]
from bench.utils import write_section  # noqa: E402
from study_runner import Steps, mean_sd  # noqa: E402

KEY = 'distance-study'
CONTROL = 'local_cnn'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default='output/reach/distance')
    p.add_argument('--models', nargs='+', default=['sgconvnext_atto', 'convnext_atto'])
    p.add_argument('--distances', nargs='+', type=int, default=[32, 64, 96])
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1])
    p.add_argument('--steps', type=int, default=800)
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--val-count', type=int, default=400)
    p.add_argument('--erf-images', type=int, default=20)
    p.add_argument('--jobs', type=int, default=2)
    p.add_argument('--plot', metavar='PNG')
    p.add_argument('--erf-plot', metavar='PNG')
    p.add_argument('--write', metavar='PATH', help='also write the tables into this markdown file')
    p.add_argument('--dry-run', action='store_true', help='print the commands only')
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f'--jobs must be >= 1, got {args.jobs}')
    return args


def run_name(model: str, distance: int, seed: int) -> str:
    return f'{model}-d{distance}-seed{seed}'


def planned_runs(args):
    """[(model, distance, seed)]: the control at every distance for the first seed, then seed-major, each seed's
    shortest and longest distance first (the two the goal compares), so a study cut short has those."""
    runs = [(CONTROL, d, args.seeds[0]) for d in args.distances]
    ordered = sorted(args.distances)
    ordered = ordered[:1] + ordered[-1:] + ordered[1:-1] if len(ordered) > 1 else ordered
    runs += [(m, d, s) for s in args.seeds for d in ordered for m in args.models]
    return runs


def main(argv=None):
    args = parse_args(argv)
    steps = Steps(args.out, args.jobs, args.dry_run, prog='distance_study.py')
    futures = []
    for model, distance, seed in planned_runs(args):
        out = os.path.join(args.out, run_name(model, distance, seed))
        command = [os.path.join(HERE, 'distance_run.py'), '--model', model, '--distance', str(distance),
                   '--seed', str(seed), '--steps', str(args.steps), '--batch-size', str(args.batch_size),
                   '--lr', str(args.lr), '--val-count', str(args.val_count), '--eval-every', str(max(1, args.steps // 4)),
                   '--out', out]
        futures.append(steps.run(run_name(model, distance, seed), command, os.path.join(out, 'summary.json')))
    for future in futures:
        future.result()
    if not args.dry_run:
        report(args)


def run_erf(run_dir: str, model: str, distance: int, count: int):
    """(RepLKNet's area ratios {t: ratio}, the raw map) of a trained run's centre-pixel output."""
    import torch
    import distance_cues
    import erf
    from distance_run import build_model, to_batch
    torch.set_num_threads(1)
    net = build_model(model)
    net.load_state_dict(torch.load(os.path.join(run_dir, 'model.pth'), map_location='cpu', weights_only=True))
    images, labels = distance_cues.validation_set(distance_cues.Items('val'), distance, count)
    batch = to_batch(images, labels)[0]
    data = erf.contribution_map(net.eval(), [batch[i:i + 1] for i in range(len(batch))])
    return {t: r for t, (_, r) in erf.area_ratios(data).items()}, data


def collect(args) -> dict:
    results = {}
    for model, distance, seed in planned_runs(args):
        run_dir = os.path.join(args.out, run_name(model, distance, seed))
        path = os.path.join(run_dir, 'summary.json')
        if not os.path.exists(path):
            continue
        with open(path) as f:
            summary = json.load(f)
        with open(os.path.join(run_dir, 'eval.csv'), newline='') as f:
            curve = {int(row['step']): float(row['target_acc']) for row in csv.DictReader(f)}
        ratios, data = run_erf(run_dir, model, distance, args.erf_images)
        np.save(os.path.join(run_dir, 'erf.npy'), data)
        results[run_name(model, distance, seed)] = dict(
            model=model, distance=distance, seed=seed, **{k: summary[k] for k in (
                'target_acc', 'background_acc', 'train_seconds')},
            curve=curve, **{f'erf_t{round(100 * t)}': r for t, r in ratios.items()})
    return results


def tables(args, results: dict) -> str:
    models = [CONTROL] + args.models
    cell = {}
    for r in results.values():
        cell.setdefault((r['model'], r['distance']), []).append(r)
    head = '| model | ' + ' | '.join(f'd = {d}' for d in args.distances) + ' |'
    rule = '|---|' + '---|' * len(args.distances)
    lines = ['Target-pixel accuracy (%, chance 50; mean ± sd over seeds; the control: one seed):', '', head, rule]
    for m in models:
        lines.append(f'| {m} | ' + ' | '.join(mean_sd([r['target_acc'] for r in cell.get((m, d), [])])
                                              for d in args.distances) + ' |')
    lines += ['', 'Background accuracy (%, the local part of the task):', '', head, rule]
    for m in models:
        lines.append(f'| {m} | ' + ' | '.join(mean_sd([r['background_acc'] for r in cell.get((m, d), [])])
                                              for d in args.distances) + ' |')
    lines += ['', 'ERF of the trained segmenter (RepLKNet area ratio of the centre pixel\'s gradient, t = 20 % / 99 %):',
              '', head, rule]
    for m in models:
        lines.append(f'| {m} | ' + ' | '.join(
            ' / '.join(mean_sd([r[k] for r in cell.get((m, d), [])], 3) for k in ('erf_t20', 'erf_t99'))
            for d in args.distances) + ' |')
    steps = sorted({step for r in results.values() for step in r['curve']})
    lines += ['', 'Target-pixel accuracy during training, per run (when each left the 50 % plateau):', '',
              '| run | ' + ' | '.join(f'step {s}' for s in steps) + ' |', '|---|' + '---|' * len(steps)]
    for name, r in results.items():
        if r['model'] != CONTROL:
            lines.append(f'| {name} | ' + ' | '.join(f'{r["curve"][s]:.1f}' if s in r['curve'] else '-'
                                                    for s in steps) + ' |')
    return '\n'.join(lines)


def plot(args, results: dict) -> None:
    import erf
    from matplotlib.figure import Figure
    fig = Figure(figsize=(5.5, 3.6), dpi=110)
    ax = fig.add_subplot()
    for m in [CONTROL] + args.models:
        xs, ys = zip(*sorted((r['distance'], r['target_acc']) for r in results.values() if r['model'] == m)) \
            if any(r['model'] == m for r in results.values()) else ((), ())
        if not xs:
            continue
        means = [np.mean([y for x2, y in zip(xs, ys) if x2 == d]) for d in sorted(set(xs))]
        line, = ax.plot(sorted(set(xs)), means, marker='o', label=m)
        ax.scatter(xs, ys, color=line.get_color(), s=12, alpha=0.5)
    ax.axhline(50, color='grey', lw=0.8, ls=':')
    ax.set_xlabel('distance d from target to cue (px)')
    ax.set_ylabel('target-pixel accuracy (%)')
    ax.legend(fontsize=8)
    fig.tight_layout()
    erf.save_png(fig, args.plot)


def erf_plot(args, results: dict) -> None:
    import erf
    from matplotlib.figure import Figure
    d, seed = max(args.distances), args.seeds[0]
    names = [run_name(m, d, seed) for m in [CONTROL] + args.models if run_name(m, d, seed) in results]
    fig = Figure(figsize=(2.6 * len(names), 3.1), dpi=110)
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        ax.imshow(erf.scaled(np.load(os.path.join(args.out, name, 'erf.npy'))), cmap='pink', vmin=0, vmax=1)
        ax.set_title(f'{results[name]["model"]}, d={d}\nt=20%: {results[name]["erf_t20"]:.3f}', fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    erf.save_png(fig, args.erf_plot)


def report(args):
    results = collect(args)
    with open(os.path.join(args.out, 'results.json'), 'w') as f:
        json.dump(results, f, indent=1)
    text = tables(args, results)
    with open(os.path.join(args.out, 'results.md'), 'w') as f:
        f.write(text + '\n')
    print(text)
    if args.plot:
        plot(args, results)
    if args.erf_plot:
        erf_plot(args, results)
    if args.write:
        write_section(args.write, KEY, text)


if __name__ == '__main__':
    main()
