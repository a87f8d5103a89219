#!/usr/bin/env python
"""Where an inference forward's time goes: each stage's token mixers (the blocks' ``conv_dw``) against the rest.

    python tools/profile_mixer.py                                  # sgconvnext_tiny vs convnext_tiny, 224 px, batch 8
    python tools/profile_mixer.py --img-size 1024 --build-size 224 --batch-size 1 --sg-tune

For each model (channels_last, eval, no grad): one warm-up forward, then --runs timed forwards with a timer
around every ``conv_dw``; the table gives the median per stage, the mixers' sum and the whole forward (ms), and the
mixers' multiply-adds per output pixel and channel at each stage (SGConv2d: by the backend it runs; 7x7: 49).
"""
import argparse
import statistics
import time
from collections import defaultdict

import torch

from bench.utils import create_model_for_size, log

from sgconvnext import SGConv2d, tune_backends  # noqa: E402
from sgconvnext.toeplitz import is_channels_last  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', nargs='+', default=['sgconvnext_tiny', 'convnext_tiny'])
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--build-size', type=int, default=None, help='build the models for N px (default: --img-size)')
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--runs', type=int, default=3)
    p.add_argument('--sg-tune', action='store_true', help='tune SGConv2d backends first (sgconvnext.tune_backends)')
    args = p.parse_args(argv)
    if args.runs < 1 or args.batch_size < 1 or args.img_size < 1:
        p.error(f'--runs, --batch-size and --img-size must be >= 1, got {args.runs}, {args.batch_size}, '
                f'{args.img_size}')
    return args


def macs_per_output(module, x: torch.Tensor) -> int:
    """Multiply-adds per output pixel and channel of one mixer call."""
    if not isinstance(module, SGConv2d):
        return module.kernel_size[0] * module.kernel_size[1]
    h, w = x.shape[-2:]
    backend = module.resolve_backend(h, w, x.device, False, is_channels_last(x), 'float32')
    return {'matmul': h + w, 'direct': 2 * h - 1 + 2 * w - 1}.get(backend, 0)  # fft: not per pixel


def profile(model, x: torch.Tensor, runs: int):
    """({stage: [ms per run]}, [whole forward ms per run], {stage: MACs per output})."""
    stage_ms, totals, macs, starts = defaultdict(list), [], {}, {}
    current = {}  # stage -> ms of the timed run in progress (none during the warm-up)
    hooks = []
    for name, module in model.named_modules():
        if name.endswith('conv_dw'):
            stage = int(name.split('.')[1])

            def before(mod, args, name=name):
                starts[name] = time.perf_counter()

            def after(mod, args, out, name=name, stage=stage):
                elapsed = 1e3 * (time.perf_counter() - starts[name])
                current[stage] = current.get(stage, 0.0) + elapsed
                macs[stage] = macs_per_output(mod, args[0])
            hooks += [module.register_forward_pre_hook(before), module.register_forward_hook(after)]
    try:
        with torch.no_grad():
            model(x)
            for _ in range(runs):
                current.clear()
                start = time.perf_counter()
                model(x)
                totals.append(1e3 * (time.perf_counter() - start))
                for stage, ms in current.items():
                    stage_ms[stage].append(ms)
    finally:
        for hook in hooks:
            hook.remove()
    return stage_ms, totals, macs


def main(argv=None):
    args = parse_args(argv)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size).contiguous(memory_format=torch.channels_last)
    lines = ['| model | ' + ' | '.join(f'stage {i} mixers ms (MACs/px)' for i in range(4))
             + ' | mixers ms | forward ms | mixers share |', '|---|' + '---|' * 7]
    for name in args.models:
        log(f'{name}: building and timing')
        model = create_model_for_size(name, args.build_size or args.img_size).eval().to(memory_format=torch.channels_last)
        if args.sg_tune and any(isinstance(m, SGConv2d) for m in model.modules()):
            tune_backends(model, x, modes=('infer',), runs=args.runs)
        stage_ms, totals, macs = profile(model, x, args.runs)
        per_stage = {s: statistics.median(v) for s, v in sorted(stage_ms.items())}
        mixers, total = sum(per_stage.values()), statistics.median(totals)
        cells = [f'{per_stage[s]:.1f} ({macs[s]})' for s in per_stage]
        lines.append(f'| {name} | ' + ' | '.join(cells) + f' | {mixers:.1f} | {total:.1f} | {mixers / total:.0%} |')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
