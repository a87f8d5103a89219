#!/usr/bin/env python
"""Did a change cost time? SGConvNeXt's token mixers at another git revision against this checkout's, in one process.

    python tools/bench_revisions.py --rev 5eea8f0                     # tiny, 224 px, batch 8, inference + training
    python tools/bench_revisions.py --rev 5eea8f0 --model sgconvnext_atto --bench train --steps 20

The model is built once from this checkout; a copy gets every block's ``conv_dw`` replaced by the ``SGConv2d`` of
``--rev`` (its ``sgconvnext`` package read with ``git archive``, loaded under another name) holding the same
weights, so only the layer's code differs. Both run beside timm's ConvNeXt twin (``--baseline``), step by step in a
shuffled order each round (none always runs right after another), and each cell is the median of --steps steps
after --warmup; ratios are to the baseline. Untuned ``auto`` backends unless --model-kwargs says otherwise.
"""
import argparse
import copy
import datetime
import io
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

import torch
import torch.nn.functional as F

from bench.utils import command_line, describe_machine, git_revision, log, write_section

import timm  # noqa: E402
import sgconvnext  # noqa: E402,F401
from sgconvnext import SGConv2d  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLD_PACKAGE = 'sgconvnext_at_revision'


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--rev', required=True, help='git revision whose SGConv2d to time (e.g. 5eea8f0)')
    p.add_argument('--model', default='sgconvnext_tiny')
    p.add_argument('--baseline', default=None, help='timm model to compare with (default: the ConvNeXt twin)')
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--bench', nargs='+', choices=('infer', 'train'), default=['infer', 'train'])
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--steps', type=int, default=15)
    p.add_argument('--write', metavar='PATH', help='write the table into this markdown file as a section')
    p.add_argument('--section', default=None, help='section name (default: revisions-<rev>)')
    args = p.parse_args(argv)
    if not args.model.startswith('sgconvnext_'):
        p.error(f'--model must be an sgconvnext_* model, got {args.model!r}')
    if args.steps < 1 or args.warmup < 0:
        p.error(f'--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}')
    args.baseline = args.baseline or args.model.replace('sgconvnext_', 'convnext_')
    return args


def load_revision_layer(rev: str):
    """SGConv2d of ``rev``'s sgconvnext package, imported as OLD_PACKAGE (its __init__ left out: it would register
    the models with timm a second time)."""
    try:
        archive = subprocess.run(['git', 'archive', rev, 'sgconvnext'], cwd=ROOT, capture_output=True, check=True).stdout
    except subprocess.CalledProcessError as e:
        sys.exit(f'bench_revisions.py: error: git archive {rev} failed: {e.stderr.decode().strip()}')
    folder = tempfile.mkdtemp(prefix='sgconvnext-rev-')
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter='data')
    os.rename(os.path.join(folder, 'sgconvnext'), os.path.join(folder, OLD_PACKAGE))
    open(os.path.join(folder, OLD_PACKAGE, '__init__.py'), 'w').close()
    sys.path.insert(0, folder)
    from sgconvnext_at_revision.sgconv import SGConv2d as RevisionSGConv2d
    return RevisionSGConv2d


def with_revision_layers(model, layer_class):
    """A copy of ``model`` whose SGConv2d layers are ``layer_class`` instances with the same settings and weights."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, SGConv2d):
            parent = model.get_submodule(name.rsplit('.', 1)[0])
            old = layer_class(module.dim, module.l_max, kernel_dim=module.kernel_h.kernel_dim,
                              decay=module.kernel_h.decay, backend=module.backend, bias=module.bias is not None)
            old.load_state_dict(module.state_dict())
            setattr(parent, name.rsplit('.', 1)[1], old)
    return model


def time_models(models, mode, x, y, warmup, steps):
    """{name: median seconds} of one inference forward or SGD training step, shuffled order per round."""
    optimizers = {k: torch.optim.SGD(m.parameters(), lr=1e-3) for k, m in models.items()}

    def step(name):
        model = models[name]
        if mode == 'infer':
            with torch.no_grad():
                model.eval()(x)
            return
        F.cross_entropy(model.train()(x), y).backward()
        optimizers[name].step()
        optimizers[name].zero_grad(set_to_none=True)

    rng, times = random.Random(0), {k: [] for k in models}
    for i in range(warmup + steps):
        order = list(models)
        rng.shuffle(order)
        for name in order:
            start = time.perf_counter()
            step(name)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None):
    args = parse_args(argv)
    torch.manual_seed(0)
    model = timm.create_model(args.model, img_size=args.img_size)
    models = {args.baseline: timm.create_model(args.baseline), f'{args.model} ({git_revision()}, this checkout)': model,
              f'{args.model} ({args.rev})': with_revision_layers(model, load_revision_layer(args.rev))}
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    y = torch.randint(0, 1000, (args.batch_size,))
    rows = ['| model | ' + ' | '.join(f'{m} ms (ratio)' for m in args.bench) + ' |', '|---' * (1 + len(args.bench)) + '|']
    medians = {}
    for mode in args.bench:
        log(f'timing {mode}: {args.warmup} warm-up + {args.steps} steps per model, shuffled each round')
        medians[mode] = time_models(models, mode, x, y, args.warmup, args.steps)
    for name in models:
        rows.append(f'| {name} | ' + ' | '.join(
            f'{medians[m][name] * 1e3:.0f} ({medians[m][name] / medians[m][args.baseline]:.3f})' for m in args.bench) + ' |')
    report = '\n'.join([
        f'### {args.model}\'s SGConv2d at {args.rev} against this checkout, beside {args.baseline}', '',
        f'- date: {datetime.date.today().isoformat()}, commit {git_revision()}',
        f'- machine: {describe_machine(torch.device("cpu"))}',
        f'- command: `{command_line()}`',
        f'- {args.img_size} px, batch {args.batch_size}, untuned auto; median of {args.steps} steps after {args.warmup} '
        f'warm-up, models in a shuffled order each round; ratio to {args.baseline}', '', *rows])
    print(report)
    if args.write:
        write_section(args.write, args.section or f'revisions-{args.rev}', report)
        log(f'wrote {args.write}')


if __name__ == '__main__':
    main()
