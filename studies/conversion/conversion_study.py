#!/usr/bin/env python
"""From a trained ConvNeXt to an SGConvNeXt: convert the 7x7 kernels (rank 1), drop them, or keep training ConvNeXt.

    python studies/resolution/make_fashion_mnist.py --out data/fmnist --train 1000 --val 500
    python studies/conversion/conversion_study.py --data-dir data/fmnist --out output/conversion --seeds 0 1 \\
        --write docs/RESULTS.md

For every --seeds:

1. Teacher: the resolution study's convnext_atto run (its TRAIN_FLAGS, --epochs at --img-size), the same command
   and run name as ``resolution_study.py`` (so a finished one is reused).
2. ``tools/convert_convnext.py`` of the teacher's last checkpoint into sgconvnext_atto at --img-size, once per
   conversion (``rank1``; ``none``: today's warm start, the SGConv kernels at their seeded init).
3. ``tools/validate.py`` of the teacher and of each converted model with no fine-tune, at --img-size and at 2x
   (sgconvnext under both size policies).
4. Fine-tunes of each converted model and of the teacher itself (``--initial-checkpoint``), all with the same
   flags: TRAIN_FLAGS with --finetune-lr and no warm-up, either constant (``--sched step --decay-rate 1``: one
   run, whose evaluation after epoch e is that of an e-epoch fine-tune) or annealed to 0 (``--finetune-sched
   cosine``: one run per budget of 1 .. --finetune-epochs epochs).
5. sgconvnext_atto from scratch (--epochs), the resolution study's run (``--scratch 0`` skips it).
6. Kernel pictures (``tools/plot_kernels.py``) of the converted model at load and after the fine-tune, and the
   far field: the share of each axis kernel's energy at offsets beyond 3 (what a 7x7 kernel reaches).

Steps are ordinary commands run by ``studies/study_runner.py`` (skipped when done, --jobs at a time, one thread
each). Tables: ``OUT/conversion-SCHED-lrLR.md``, and the section ``conversion-study-SCHED-lrLR`` of --write.
"""
import argparse
import json
import os
import sys

_STUDIES = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [_STUDIES, os.path.join(_STUDIES, 'resolution'), os.path.join(os.path.dirname(_STUDIES), 'tools')]
from bench.utils import write_section  # noqa: E402
from resolution_study import train_command, validate_command  # noqa: E402
from study_runner import ROOT, Steps, finished, mean_sd, summary_rows  # noqa: E402

# recipe -> (sg_convert, --sg-kernel-lr-scale of its fine-tunes); a recipe's runs are named after it
RECIPES = {'rank1': ('rank1', 1.0), 'none': ('none', 1.0), 'rank1-klr10': ('rank1', 10.0),
           'rank1_far_init': ('rank1_far_init', 1.0), 'rank1_far_init-klr10': ('rank1_far_init', 10.0)}
FINETUNE_SCHEDULES = {  # flags after TRAIN_FLAGS (the later flag wins)
    'constant': ['--sched', 'step', '--decay-rate', '1', '--warmup-epochs', '0'],
    'cosine': ['--sched', 'cosine', '--sched-on-updates', '--warmup-epochs', '0', '--min-lr', '0'],
}
DEFAULT_FINETUNE_LR = 5e-4


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data-dir', required=True, help='ImageFolder with train/ and val/')
    p.add_argument('--out', required=True, help='folder for the runs, conversion.md, commands.txt')
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1])
    p.add_argument('--img-size', type=int, default=64)
    p.add_argument('--epochs', type=int, default=8, help='teacher and from-scratch epochs (default: 8)')
    p.add_argument('--lr', type=float, default=2e-3, help='teacher and from-scratch peak LR (the resolution study)')
    p.add_argument('--finetune-epochs', type=int, default=2)
    p.add_argument('--finetune-lr', type=float, default=DEFAULT_FINETUNE_LR)
    p.add_argument('--finetune-sched', choices=tuple(FINETUNE_SCHEDULES), default='constant',
                   help='constant: one run, evaluated after each epoch; cosine: one run per budget of 1 .. '
                        '--finetune-epochs epochs, each annealed to 0 (default: constant)')
    p.add_argument('--scratch', type=int, default=1, choices=(0, 1),
                   help='1: also train sgconvnext_atto from scratch (--epochs); 0: skip it (default: 1)')
    p.add_argument('--recipes', nargs='+', choices=tuple(RECIPES), default=['rank1', 'none'],
                   help='conversions (and kernel LR scales of their fine-tunes) to compare (default: rank1 none)')
    p.add_argument('--num-classes', type=int, default=10)
    p.add_argument('--jobs', type=int, default=2)
    p.add_argument('--write', metavar='PATH', help='also write the tables into this markdown file')
    p.add_argument('--dry-run', action='store_true', help='print the commands only')
    args = p.parse_args(argv)
    if not os.path.isdir(os.path.join(args.data_dir, 'train')):
        p.error(f'--data-dir {args.data_dir} has no train/ folder')
    return args


def trained(steps, args, model, seed):
    """The resolution study's from-scratch run of ``model``: (its last checkpoint, the step's future)."""
    run = f'{model}-{args.img_size}px-seed{seed}'
    last = os.path.join(args.out, run, 'last.pth.tar')
    command = train_command(args, model, seed, args.img_size, run, ['--epochs', str(args.epochs), '--lr', str(args.lr)])
    return last, steps.run(run, command, last, done=lambda: finished(os.path.join(args.out, run), args.epochs))


def evaluations(steps, args, name, checkpoint, model):
    """validate.py of ``checkpoint`` at img-size and 2x (sgconvnext under both policies): the step futures."""
    futures = []
    for size in (args.img_size, 2 * args.img_size):
        for policy in (('stretch', 'fixed') if model.startswith('sgconvnext') and size != args.img_size else (None,)):
            result = os.path.join(args.out, 'eval', f'{name}-at{size}{"-" + policy if policy else ""}.json')
            os.makedirs(os.path.dirname(result), exist_ok=True)
            command = validate_command(args, checkpoint, size, result, policy)
            futures.append(steps.run(f'eval-{os.path.basename(result)[:-5]}', command + [
                '--model', model, '--num-classes', str(args.num_classes)], result))
    return futures


def finetune_runs(args, name):
    """[(run name, epochs)] of the fine-tunes of ``name``: one run (constant LR) or one per budget (cosine)."""
    lr = '' if args.finetune_lr == DEFAULT_FINETUNE_LR else f'-lr{args.finetune_lr:g}'
    if args.finetune_sched == 'constant':
        return [(f'{name}-ft{lr}', args.finetune_epochs)]
    return [(f'{name}-ft{e}-cosine{lr}', e) for e in range(1, args.finetune_epochs + 1)]


def finetune(steps, args, name, model, seed, checkpoint, kernel_lr_scale=1.0):
    """The fine-tune runs of ``name`` from ``checkpoint``: (the longest run's last checkpoint, their futures)."""
    futures = []
    kernel_lr = ['--sg-kernel-lr-scale', f'{kernel_lr_scale:g}'] if kernel_lr_scale != 1.0 else []
    for run, epochs in finetune_runs(args, name):
        command = train_command(args, model, seed, args.img_size, run, [
            '--initial-checkpoint', checkpoint, '--epochs', str(epochs), '--lr', str(args.finetune_lr),
            *FINETUNE_SCHEDULES[args.finetune_sched], *kernel_lr])
        futures.append(steps.run(run, command, os.path.join(args.out, run, 'last.pth.tar'),
                                 done=lambda run=run, epochs=epochs: finished(os.path.join(args.out, run), epochs)))
    return os.path.join(args.out, run, 'last.pth.tar'), futures


def plot(steps, args, name, checkpoint):
    picture = os.path.join(args.out, 'kernels', f'{name}.png')
    os.makedirs(os.path.dirname(picture), exist_ok=True)
    return steps.run(f'kernels-{name}', [os.path.join(ROOT, 'tools', 'plot_kernels.py'), '--model', 'sgconvnext_atto',
                                         '--img-size', str(args.img_size), '--checkpoint', checkpoint, '--out', picture],
                     picture)


def main(argv=None):
    args = parse_args(argv)
    steps = Steps(args.out, args.jobs, args.dry_run, prog='conversion_study.py')
    waiting, after_finetunes = [], []
    teachers = {seed: trained(steps, args, 'convnext_atto', seed) for seed in args.seeds}
    for seed in args.seeds:
        teacher, teacher_run = teachers[seed]
        teacher_run.result()
        waiting += evaluations(steps, args, f'teacher-seed{seed}', teacher, 'convnext_atto')
        waiting += finetune(steps, args, f'teacher-seed{seed}', 'convnext_atto', seed, teacher)[1]
        converted_once = set()
        for recipe in args.recipes:
            conversion, kernel_lr_scale = RECIPES[recipe]
            base, name = f'{conversion}-seed{seed}', f'{recipe}-seed{seed}'
            converted = os.path.join(args.out, 'converted', f'{base}.pth')
            if conversion not in converted_once:  # recipes of one conversion share its file and evaluations
                converted_once.add(conversion)
                steps.run(f'convert-{base}', [os.path.join(ROOT, 'tools', 'convert_convnext.py'), teacher, converted,
                                              '--model', 'sgconvnext_atto', '--img-size', str(args.img_size),
                                              '--convert', conversion, '--seed', str(seed)], converted).result()
                waiting += evaluations(steps, args, base, converted, 'sgconvnext_atto')
                if conversion.startswith('rank1'):
                    waiting.append(plot(steps, args, f'{base}-at-load', converted))
            ft_last, ft_runs = finetune(steps, args, name, 'sgconvnext_atto', seed, converted, kernel_lr_scale)
            waiting += ft_runs
            if conversion.startswith('rank1'):
                after_finetunes.append((ft_runs[-1], name, ft_last))
    for seed in args.seeds if args.scratch else ():
        waiting.append(trained(steps, args, 'sgconvnext_atto', seed)[1])
    for ft_run, name, ft_last in after_finetunes:
        ft_run.result()
        waiting.append(plot(steps, args, os.path.basename(os.path.dirname(ft_last)), ft_last))
    for future in waiting:
        future.result()
    if not args.dry_run:
        report(args)


def _top1(args, name):
    path = os.path.join(args.out, 'eval', f'{name}.json')
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)['top1']


def far_field(checkpoint: str) -> list:
    """Per stage, the mean share of the axis kernels' energy at |offset| > 3, at the built size."""
    import timm
    from sgconvnext import SGConv2d  # registers the sgconvnext models too
    state = timm.models.load_state_dict(checkpoint)
    model = timm.create_model('sgconvnext_atto', num_classes=state['head.fc.weight'].shape[0])
    model.load_state_dict(state)
    shares = []
    for stage in model.stages:
        per_layer = []
        for layer in (m for m in stage.modules() if isinstance(m, SGConv2d)):
            for axis in (layer.kernel_h, layer.kernel_w):
                k = axis.kernel().detach().double() ** 2  # (C, 2 l_max - 1)
                centre = axis.l_max - 1
                near = k[:, max(0, centre - 3):centre + 4].sum(1)
                per_layer.append(float(((k.sum(1) - near) / k.sum(1).clamp_min(1e-30)).mean()))
        shares.append(100 * sum(per_layer) / len(per_layer))
    return shares


def _ft_top1(args, name):
    """Eval top-1 after 1, 2, ... epochs of fine-tune (summary.csv of the run, or the last row of each budget's)."""
    runs = finetune_runs(args, name)
    if len(runs) == 1:
        rows = summary_rows(os.path.join(args.out, runs[0][0]))
        return [r['eval_top1'] for r in rows] + [None] * (args.finetune_epochs - len(rows))
    return [_last_top1(args, run) for run, _ in runs]


def report(args):
    """OUT/conversion.json (every number), OUT/conversion.md (mean ± sd over seeds), and --write's section."""
    size, big = args.img_size, 2 * args.img_size
    rows = {
        'convnext_atto teacher (trained on: more epochs of ConvNeXt)': [
            dict(start=_top1(args, f'teacher-seed{s}-at{size}'), at2x=_top1(args, f'teacher-seed{s}-at{big}'),
                 ft=_ft_top1(args, f'teacher-seed{s}')) for s in args.seeds],
        **{_recipe_label(r): [
            dict(start=_top1(args, f'{c}-seed{s}-at{size}'), stretch=_top1(args, f'{c}-seed{s}-at{big}-stretch'),
                 fixed=_top1(args, f'{c}-seed{s}-at{big}-fixed'), ft=_ft_top1(args, f'{r}-seed{s}'))
            for s in args.seeds] for r, (c, _) in ((r, RECIPES[r]) for r in args.recipes)},
        f'sgconvnext_atto from scratch ({args.epochs} epochs)': [
            dict(start=_last_top1(args, f'sgconvnext_atto-{size}px-seed{s}')) for s in args.seeds],
    }
    far = {name: far_field(path) for name, path in _far_field_checkpoints(args).items() if os.path.exists(path)}
    tag = f'{args.finetune_sched}-lr{args.finetune_lr:g}'
    with open(os.path.join(args.out, f'conversion-{tag}.json'), 'w') as f:
        json.dump(dict(top1=rows, far_field=far), f, indent=2)
    epochs = range(1, args.finetune_epochs + 1)
    lines = [f'Fine-tune: {args.finetune_sched} LR {args.finetune_lr:g}'
             + (', one run per budget' if args.finetune_sched == 'cosine' else ', one run evaluated after each epoch')
             + '.', '', f'| start | top-1 at {size}, no fine-tune | '
             + ' | '.join(f'after {e} epoch{"s" if e > 1 else ""} of fine-tune' for e in epochs)
             + f' | at {big} (2x), no fine-tune: stretch / fixed |', '|---|---|' + '---|' * (len(epochs) + 1)]
    for name, per_seed in rows.items():
        if all(s['start'] is None for s in per_seed):
            continue  # not run (--scratch 0)
        ft = [mean_sd([s.get('ft', [None] * len(epochs))[e - 1] for s in per_seed]) for e in epochs]
        if 'at2x' in per_seed[0]:
            twice = mean_sd([s['at2x'] for s in per_seed])
        elif 'stretch' in per_seed[0]:
            twice = f"{mean_sd([s['stretch'] for s in per_seed])} / {mean_sd([s['fixed'] for s in per_seed])}"
        else:
            twice = '-'
        lines.append(f'| {name} | {mean_sd([s["start"] for s in per_seed])} | ' + ' | '.join(ft) + f' | {twice} |')
    if far:
        lines += ['', '| far field: energy share at offsets > 3, per stage | ' + ' | '.join(
            f'stage {i}' for i in range(4)) + ' |', '|---|---|---|---|---|']
        lines += [f'| {name} | ' + ' | '.join(f'{abs(v):.2f} %' for v in shares) + ' |' for name, shares in far.items()]
    text = '\n'.join(lines)
    with open(os.path.join(args.out, f'conversion-{tag}.md'), 'w') as f:
        f.write(text + '\n')
    print(text)
    if args.write:
        write_section(args.write, f'conversion-study-{tag}', text)


def _last_top1(args, run):
    rows = summary_rows(os.path.join(args.out, run))
    return rows[-1]['eval_top1'] if rows else None


def _recipe_label(recipe: str) -> str:
    conversion, kernel_lr_scale = RECIPES[recipe]
    return f'sgconvnext_atto, sg_convert={conversion}' + (
        f', kernel LR x{kernel_lr_scale:g}' if kernel_lr_scale != 1.0 else '')


def _far_field_checkpoints(args):
    seed, out = args.seeds[0], {}
    for recipe in args.recipes:
        conversion = RECIPES[recipe][0]
        if conversion != 'none':
            out[f'{conversion} at load (seed {seed})'] = os.path.join(args.out, 'converted', f'{conversion}-seed{seed}.pth')
    for recipe in args.recipes:
        ft = finetune_runs(args, f'{recipe}-seed{seed}')[-1][0]
        out[f'{_recipe_label(recipe)[len("sgconvnext_atto, sg_convert="):]} after {args.finetune_epochs} epochs of '
            f'fine-tune'] = os.path.join(args.out, ft, 'last.pth.tar')
    out[f'from scratch, {args.epochs} epochs'] = os.path.join(args.out, f'sgconvnext_atto-{args.img_size}px-seed{seed}',
                                                              'last.pth.tar')
    return out


if __name__ == '__main__':
    main()
