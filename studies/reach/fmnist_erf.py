#!/usr/bin/env python
"""The effective receptive fields of the Fashion-MNIST classifiers: at init, trained, converted, fine-tuned.

    python studies/reach/fmnist_erf.py --runs output/reach/conversion --data-dir data/fmnist --out output/reach/erf \\
        --plot docs/erf_fmnist.png --write docs/RESULTS.md

One ``tools/erf.py`` command per model (studies/study_runner.py: skipped when done, one thread each), all on the
same --num-images validation images at --img-size (96: the stage-3 map is 3x3, so its centre cell is the image's
centre) with ``sg_resize=--sg-resize`` for sgconvnext (fixed, the default: the trained taps at their pixel extent,
the models were trained at 64 px; stretch: resampled to span the map). The models are those of ``studies/conversion/conversion_study.py`` in --runs (seed --seed; any not
there is left out) and both families at init. The report: ``OUT/erf.md`` (area ratios at t = 20, 30, 50, 99 %),
--plot (the maps side by side, RepLKNet's scaling) and the section ``fmnist-erf-SIZE-POLICY`` of --write.
"""
import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
_STUDIES = os.path.dirname(HERE)
sys.path[:0] = [_STUDIES, os.path.join(os.path.dirname(_STUDIES), 'tools')]
from bench.utils import write_section  # noqa: E402
from study_runner import ROOT, Steps  # noqa: E402

KEY = 'fmnist-erf'  # + '-' + the image size
THRESHOLDS = (20, 30, 50, 99)


def models(runs: str, seed: int) -> list:
    """[(label, model name, checkpoint or '')] in table order."""
    s = seed
    return [('convnext_atto, init', 'convnext_atto', ''),
            ('convnext_atto, trained (teacher)', 'convnext_atto', f'{runs}/convnext_atto-64px-seed{s}/last.pth.tar'),
            ('sgconvnext_atto, init', 'sgconvnext_atto', ''),
            ('sgconvnext_atto, trained from scratch', 'sgconvnext_atto', f'{runs}/sgconvnext_atto-64px-seed{s}/last.pth.tar'),
            ('rank1, at load', 'sgconvnext_atto', f'{runs}/converted/rank1-seed{s}.pth'),
            ('rank1, fine-tuned', 'sgconvnext_atto', f'{runs}/rank1-seed{s}-ft/last.pth.tar'),
            ('rank1, fine-tuned, kernel LR x10', 'sgconvnext_atto', f'{runs}/rank1-klr10-seed{s}-ft/last.pth.tar'),
            ('rank1_far_init, at load', 'sgconvnext_atto', f'{runs}/converted/rank1_far_init-seed{s}.pth'),
            ('rank1_far_init, fine-tuned', 'sgconvnext_atto', f'{runs}/rank1_far_init-seed{s}-ft/last.pth.tar'),
            ('rank1_far_init, fine-tuned, kernel LR x10', 'sgconvnext_atto',
             f'{runs}/rank1_far_init-klr10-seed{s}-ft/last.pth.tar')]


def slug(label: str) -> str:
    return ''.join(c if c.isalnum() else '-' for c in label).strip('-').replace('--', '-')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--runs', required=True, help="conversion_study.py's --out")
    p.add_argument('--data-dir', required=True)
    p.add_argument('--out', required=True)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--img-size', type=int, default=96)
    p.add_argument('--num-images', type=int, default=50)
    p.add_argument('--sg-resize', choices=('fixed', 'stretch'), default='fixed')
    p.add_argument('--jobs', type=int, default=1)
    p.add_argument('--plot', metavar='PNG')
    p.add_argument('--write', metavar='PATH')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    steps = Steps(args.out, args.jobs, prog='fmnist_erf.py')
    done = []
    for label, model, checkpoint in models(args.runs, args.seed):
        if checkpoint and not os.path.exists(checkpoint):
            continue
        name = slug(label)
        command = [os.path.join(ROOT, 'tools', 'erf.py'), '--model', model, '--data-dir', args.data_dir,
                   '--img-size', str(args.img_size), '--num-images', str(args.num_images), '--num-classes', '10',
                   '--matrix', os.path.join(args.out, f'{name}.npy'),
                   '--results-file', os.path.join(args.out, f'{name}.json')]
        command += ['--checkpoint', checkpoint] if checkpoint else []
        command += ['--model-kwargs', f'sg_resize={args.sg_resize}'] if model.startswith('sg') else []
        done.append((label, steps.run(f'erf-{name}', command, os.path.join(args.out, f'{name}.json'))))
    for _, future in done:
        future.result()
    report(args, [label for label, _ in done])


def report(args, labels: list) -> None:
    lines = [f'| model ({args.img_size} px, stage 3, {args.num_images} images, sgconvnext {args.sg_resize}) | '
             + ' | '.join(f't = {t} %' for t in THRESHOLDS) + ' |', '|---|' + '---|' * len(THRESHOLDS)]
    for label in labels:
        with open(os.path.join(args.out, f'{slug(label)}.json')) as f:
            r = json.load(f)
        lines.append(f'| {label} | ' + ' | '.join(f'{r[f"area_ratio_t{t}"]:.3f}' for t in THRESHOLDS) + ' |')
    text = '\n'.join(lines)
    with open(os.path.join(args.out, 'erf.md'), 'w') as f:
        f.write(text + '\n')
    print(text)
    if args.plot:
        import erf
        from matplotlib.figure import Figure
        columns = 5
        rows = (len(labels) + columns - 1) // columns
        fig = Figure(figsize=(2.2 * columns, 2.8 * rows), dpi=72)
        for i, label in enumerate(labels):
            ax = fig.add_subplot(rows, columns, i + 1)
            ax.imshow(erf.scaled(np.load(os.path.join(args.out, f'{slug(label)}.npy'))), cmap='pink', vmin=0, vmax=1)
            ax.set_title(label.replace(', ', ',\n', 1), fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.tight_layout()
        erf.save_png(fig, args.plot, colours=64)
    if args.write:
        write_section(args.write, f'{KEY}-{args.img_size}-{args.sg_resize}', text)


if __name__ == '__main__':
    main()
