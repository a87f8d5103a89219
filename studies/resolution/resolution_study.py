#!/usr/bin/env python
"""Train at one size, evaluate at other sizes without fine-tuning, then fine-tune at 2x: sgconvnext vs convnext.

    python studies/resolution/make_fashion_mnist.py --out data/fmnist --train 1000 --val 500
    python studies/resolution/resolution_study.py --data-dir data/fmnist --out output/resolution --img-size 64 \\
        --seeds 0 1 --write docs/RESULTS.md

For every --models x --seeds: ``train_imagenet.py`` at --img-size with the same flags (TRAIN_FLAGS plus
--epochs / --lr), then ``tools/validate.py`` of its last checkpoint at each --scales x img-size (sgconvnext under
each size policy of --policies: the same weights, kernels resampled or kept at their pixel extent), then a
--finetune-epochs fine-tune at --finetune-scale x img-size from that checkpoint (``--initial-checkpoint``;
sgconvnext once per policy), validated at that size. Runs --jobs processes at a time, one thread each.

Every step is an ordinary command, printed as it starts and kept in ``OUT/commands.txt``; a step whose output
exists is not run again (delete it to redo), so an interrupted study continues where it stopped (training runs
resume from their last epoch: ``--resume auto``). The tables
(``OUT/results.md``, and the section ``resolution-study`` of --write) give top-1 per size and the share of the
1x top-1 each model keeps.
"""
import argparse
import json
import os
import sys

_STUDIES = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [_STUDIES, os.path.join(os.path.dirname(_STUDIES), 'tools')]  # study_runner; the user tools
from bench.utils import write_section  # noqa: E402
from study_runner import ROOT, Steps, finished, mean_sd  # noqa: E402
TRAIN_FLAGS = ['--opt', 'adamw', '--weight-decay', '0.05', '--sched', 'cosine', '--sched-on-updates', '--warmup-epochs', '1',
               '--scale', '0.35', '1', '--smoothing', '0.1', '--crop-pct', '1.0', '-b', '64', '-j', '1',
               '--device', 'cpu', '--checkpoint-hist', '1', '--log-interval', '50']
EVAL_FLAGS = ['--crop-pct', '1.0', '-b', '100', '-j', '1', '--device', 'cpu']


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data-dir', required=True, help='ImageFolder with train/ and val/')
    p.add_argument('--out', required=True, help='folder for the runs, results.json, results.md, commands.txt')
    p.add_argument('--models', nargs='+', default=['sgconvnext_atto', 'convnext_atto'])
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1])
    p.add_argument('--img-size', type=int, default=64, help='training size (default: 64)')
    p.add_argument('--scales', nargs='+', type=float, default=[0.75, 1.0, 1.5, 2.0], help='eval sizes / img-size')
    p.add_argument('--policies', nargs='+', default=['stretch', 'fixed'], help='sgconvnext sg_resize policies')
    p.add_argument('--epochs', type=int, default=8)
    p.add_argument('--lr', type=float, default=2e-3)
    p.add_argument('--num-classes', type=int, default=10)
    p.add_argument('--finetune-scale', type=float, default=2.0)
    p.add_argument('--finetune-epochs', type=int, default=1, help='0: no fine-tune')
    p.add_argument('--finetune-lr', type=float, default=5e-4)
    p.add_argument('--finetune-seeds', nargs='+', type=int, default=None, help='default: --seeds')
    p.add_argument('--jobs', type=int, default=2, help='processes at a time (default: 2)')
    p.add_argument('--write', metavar='PATH', help='also write the tables into this markdown file')
    p.add_argument('--dry-run', action='store_true', help='print the commands only')
    args = p.parse_args(argv)
    if not os.path.isdir(os.path.join(args.data_dir, 'train')):
        p.error(f'--data-dir {args.data_dir} has no train/ folder')
    if args.jobs < 1:
        p.error(f'--jobs must be >= 1, got {args.jobs}')
    args.finetune_seeds = args.seeds if args.finetune_seeds is None else args.finetune_seeds
    return args


def sized(args, scale: float) -> int:
    return int(round(args.img_size * scale))


def train_command(args, model, seed, size, experiment, extra=()):
    return [os.path.join(ROOT, 'train_imagenet.py'), '--data-dir', args.data_dir, '--model', model,
            '--img-size', str(size), '--num-classes', str(args.num_classes), '--seed', str(seed),
            *TRAIN_FLAGS, '--output', args.out, '--experiment', experiment, '--resume', 'auto', *extra]


def validate_command(args, checkpoint, size, result, policy=None):
    kwargs = ['--model-kwargs', f'sg_resize={policy}'] if policy else []
    return [os.path.join(ROOT, 'tools', 'validate.py'), '--checkpoint', checkpoint, '--data-dir', args.data_dir,
            '--img-size', str(size), *EVAL_FLAGS, *kwargs, '--results-file', result]


def policies_of(args, model):
    return args.policies if model.startswith('sgconvnext') else [None]


def main(argv=None):
    args = parse_args(argv)
    steps = Steps(args.out, args.jobs, args.dry_run, prog='resolution_study.py')
    ft_size = sized(args, args.finetune_scale)
    pending = []
    for model in args.models:
        for seed in args.seeds:
            run = f'{model}-{args.img_size}px-seed{seed}'
            last = os.path.join(args.out, run, 'last.pth.tar')
            pending.append((model, seed, run, last, steps.run(
                run, train_command(args, model, seed, args.img_size, run, ['--epochs', str(args.epochs), '--lr',
                                                                          str(args.lr)]), last,
                done=lambda run=run: finished(os.path.join(args.out, run), args.epochs))))
    evals = []
    for model, seed, run, last, trained in pending:
        trained.result()
        for policy in policies_of(args, model):
            tag = f'-{policy}' if policy else ''
            for scale in args.scales:
                result = os.path.join(args.out, 'eval', f'{run}{tag}-at{sized(args, scale)}.json')
                os.makedirs(os.path.dirname(result), exist_ok=True)
                evals.append(steps.run(f'eval-{run}{tag}-at{sized(args, scale)}',
                                       validate_command(args, last, sized(args, scale), result, policy), result))
            if args.finetune_epochs and seed in args.finetune_seeds:
                ft = f'{run}{tag}-ft{ft_size}'
                ft_last = os.path.join(args.out, ft, 'last.pth.tar')
                kwargs = ['--model-kwargs', f'sg_resize={policy}'] if policy else []
                extra = ['--initial-checkpoint', last, '--epochs', str(args.finetune_epochs), '--lr',
                         str(args.finetune_lr), '--warmup-epochs', '0', *kwargs]
                ft_run = steps.run(ft, train_command(args, model, seed, ft_size, ft, extra), ft_last,
                                   done=lambda ft=ft: finished(os.path.join(args.out, ft), args.finetune_epochs))
                evals.append((ft_run, ft, ft_last, policy))
    for item in evals:
        if isinstance(item, tuple):
            ft_run, ft, ft_last, policy = item
            ft_run.result()
            result = os.path.join(args.out, 'eval', f'{ft}-at{ft_size}.json')
            steps.run(f'eval-{ft}-at{ft_size}', validate_command(args, ft_last, ft_size, result, policy), result).result()
        else:
            item.result()
    if not args.dry_run:
        report(args)


def _load(path):
    with open(path) as f:
        return json.load(f)


def report(args):
    """results.json (every number) and results.md (mean ± sd over seeds)."""
    ft_size = sized(args, args.finetune_scale)
    rows = []
    for model in args.models:
        for policy in policies_of(args, model):
            tag = f'-{policy}' if policy else ''
            per_seed = []
            for seed in args.seeds:
                run = f'{model}-{args.img_size}px-seed{seed}'
                top1 = {}
                for scale in args.scales:
                    path = os.path.join(args.out, 'eval', f'{run}{tag}-at{sized(args, scale)}.json')
                    top1[sized(args, scale)] = _load(path)['top1'] if os.path.exists(path) else None
                ft_path = os.path.join(args.out, 'eval', f'{run}{tag}-ft{ft_size}-at{ft_size}.json')
                top1['finetuned'] = _load(ft_path)['top1'] if os.path.exists(ft_path) else None
                per_seed.append(dict(seed=seed, top1=top1))
            rows.append(dict(model=model, policy=policy, seeds=per_seed))
    with open(os.path.join(args.out, 'results.json'), 'w') as f:
        json.dump(rows, f, indent=2)
    sizes = [sized(args, s) for s in args.scales]
    base = args.img_size
    big = sized(args, max(args.scales))
    lines = ['| model | policy | ' + ' | '.join(f'top-1 at {s}' for s in sizes)
             + f' | kept at {big} (top-1 {big} / {base}) | fine-tuned at {ft_size} |',
             '|---|---|' + '---|' * (len(sizes) + 2)]
    for row in rows:
        cells = [mean_sd([s['top1'][size] for s in row['seeds']]) for size in sizes]
        kept = [100 * s['top1'][big] / s['top1'][base] for s in row['seeds']
                if s['top1'].get(big) is not None and s['top1'].get(base)]
        ft = mean_sd([s['top1']['finetuned'] for s in row['seeds']])
        lines.append(f"| {row['model']} | {row['policy'] or '-'} | " + ' | '.join(cells)
                     + f' | {mean_sd(kept)} % | {ft} |')
    text = '\n'.join(lines)
    with open(os.path.join(args.out, 'results.md'), 'w') as f:
        f.write(text + '\n')
    print(text)
    if args.write:
        write_section(args.write, 'resolution-study', text)


if __name__ == '__main__':
    main()
