#!/usr/bin/env python
"""Dense-prediction cost of sgconvnext_tiny against convnext_tiny, in one process (issue 23 item 3).

    python tools/bench_dense.py --threads 1                                  # flops, det and seg, CPU
    python tools/bench_dense.py --bench det --device cuda --warmup 3 --runs 10
    python tools/bench_dense.py --threads 1 --write docs/BENCHMARKS.md --section dense

* flops: fvcore GMACs (sgconvnext.flops: FFTs and complex products counted; "GFLOPs" as ConvNeXt's tables count
  them, multiply-adds) of the backbone body alone (the timm ``features_only`` model of ``sgconvnext.dense.
  fpn_backbone``, no FPN), batch 1, inference forward, at --det-size (ConvNeXt's Mask R-CNN 1280x800: H 800, W 1280;
  the sgconvnext body with the dense default canvas 1344) and at --wide-size (2048x512: H 512, W 2048; built
  for canvas (512, 2048) so its kernels span the map).
* det: a training step of ``fpn_backbone(name)`` with its defaults (sgconvnext: canvas 1344, fixed-offset kernels,
  padding mask) on --det-batch images as torchvision pads them (800x1333 and 800x1200 zero-padded to 800x1344);
  loss = sum of the FPN outputs' means, backward, AdamW step. sgconvnext's body is tuned first
  (``sgconvnext.tune_backends``, train mode) and an untuned copy ("auto" rules) is timed beside it.
* seg: a training step of ``smp.FPN(encoder_name='tu-' + name, classes=19)`` at --seg-size, batch --seg-batch,
  cross-entropy on random labels, AdamW step (sgconvnext encoder built for the crop).
* Times: --warmup untimed steps, then the median of --runs steps, models interleaved (tools/bench/utils.py).
  Peak memory: tools/bench/memory.py (CUDA: max allocated; CPU: MemTracker's live tensor bytes) of one more step.
Goal: time <= 1.10x and peak memory <= 1.05x convnext_tiny's.
"""
import argparse
import datetime
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench.memory import peak_memory_mb  # noqa: E402
from bench.utils import command_line, describe_machine, git_revision, interleaved_medians, log, write_section  # noqa: E402

import sgconvnext  # noqa: E402,F401  (registers the sgconvnext_* models)
from sgconvnext.dense import fpn_backbone  # noqa: E402
from sgconvnext.flops import count_flops  # noqa: E402

BENCHES = ('flops', 'det', 'seg')
TIME_GOAL, MEMORY_GOAL = 1.10, 1.05


def _hw(text: str):
    try:
        w, h = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'sizes are WxH (e.g. 1280x800), got {text!r}')
    if w < 32 or h < 32:
        raise argparse.ArgumentTypeError(f'sizes must be at least 32x32, got {text!r}')
    return h, w


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--bench', nargs='+', choices=BENCHES + ('all',), default=['all'], help='what to measure')
    p.add_argument('--models', nargs=2, default=['convnext_tiny', 'sgconvnext_tiny'], metavar=('BASE', 'SG'),
                   help='the baseline and the sgconvnext model (default: convnext_tiny sgconvnext_tiny)')
    p.add_argument('--device', default='cpu', help='cpu or cuda[:i] (default: cpu)')
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (1 is steadier on a shared machine)')
    p.add_argument('--warmup', type=int, default=1, help='untimed steps per model (default: 1)')
    p.add_argument('--runs', type=int, default=3, help='timed steps per model, median reported (default: 3)')
    p.add_argument('--det-size', type=_hw, default=(800, 1280), metavar='WxH',
                   help='flops: the detection input (default: 1280x800)')
    p.add_argument('--wide-size', type=_hw, default=(512, 2048), metavar='WxH',
                   help='flops: the wide input, sgconvnext built for it (default: 2048x512)')
    p.add_argument('--det-images', type=_hw, nargs='+', default=[(800, 1333), (800, 1200)], metavar='WxH',
                   help='det: the batch\'s images (H x W given as WxH: 1333x800 ...), zero-padded to a multiple of 32 '
                        '(default: 1333x800 1200x800; the batch size is their number)')
    p.add_argument('--seg-size', type=int, default=512, help='seg: square crop (default: 512)')
    p.add_argument('--seg-batch', type=int, default=4, help='seg: batch size (default: 4)')
    p.add_argument('--canvas', type=int, default=None, help='det: sgconvnext canvas (default: fpn_backbone\'s, 1344)')
    p.add_argument('--no-untuned', action='store_true', help='det: do not time the untuned sgconvnext copy')
    p.add_argument('--write', metavar='PATH', help='write the report into this markdown file')
    p.add_argument('--section', default='dense', help='section name in --write (key "bench_dense:NAME")')
    args = p.parse_args(argv)
    args.bench = list(BENCHES) if 'all' in args.bench else [b for b in BENCHES if b in args.bench]
    if args.runs < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
        p.error('--runs and --threads must be >= 1, --warmup >= 0')
    if args.seg_size < 32 or args.seg_batch < 1:
        p.error('--seg-size must be >= 32 and --seg-batch >= 1')
    # the det images come as (H, W) already (the WxH text parsed by _hw)
    return args


def _sg_kwargs(name: str, canvas):
    return {} if canvas is None or not name.startswith('sg') else {'canvas': canvas}


def bench_flops(args, device) -> list:
    """Rows (bench, shape, base GMACs, sg GMACs) of the backbone body at --det-size and --wide-size."""
    rows = []
    base, sg = args.models
    for label, (h, w), canvas in (('det', args.det_size, args.canvas), ('wide', args.wide_size, (args.wide_size))):
        values = []
        for name in (base, sg):
            log(f'flops: {name} at {w}x{h}')
            body = fpn_backbone(name, **_sg_kwargs(name, canvas)).body.to(device).eval()
            x = torch.randn(1, 3, h, w, device=device)
            counter = count_flops(body, x, grad_enabled=False).unsupported_ops_warnings(False)
            values.append(counter.uncalled_modules_warnings(False).total() / 1e9)
            del body
        rows.append(('GMACs, backbone body (fvcore)', f'{w}x{h}', values[0], values[1], None))
    return rows


def det_batch(args, device) -> torch.Tensor:
    """The --det-images as torchvision batches them: zero-padded at the bottom / right to a multiple of 32."""
    height = -(-max(h for h, _ in args.det_images) // 32) * 32
    width = -(-max(w for _, w in args.det_images) // 32) * 32
    x = torch.zeros(len(args.det_images), 3, height, width, device=device)
    for i, (h, w) in enumerate(args.det_images):
        x[i, :, :h, :w] = torch.randn(3, h, w, device=device)
    return x


def train_step(model, loss_fn):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        loss = loss_fn(model)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step, optimizer


def time_and_peak(models: dict, loss_fn, args, device) -> dict:
    """{name: (median seconds, peak MiB)} of training steps, models interleaved."""
    steps = {name: train_step(model.train(), loss_fn) for name, model in models.items()}
    log(f'  {args.warmup} warm-up + {args.runs} timed steps per model, interleaved: {", ".join(models)}')
    medians = interleaved_medians({n: s for n, (s, _) in steps.items()}, device, warmup=args.warmup, runs=args.runs)
    peaks = {}
    for name, (step, optimizer) in steps.items():
        log(f'  peak memory: {name}')
        peaks[name] = peak_memory_mb(step, device, models[name], optimizer)
    return {name: (medians[name], peaks[name]) for name in models}


def bench_det(args, device) -> list:
    base, sg = args.models
    x = det_batch(args, device)
    models = {base: fpn_backbone(base).to(device)}
    sg_kwargs = _sg_kwargs(sg, args.canvas)
    torch.manual_seed(0)
    models[sg] = fpn_backbone(sg, **sg_kwargs).to(device)
    log(f'det: tuning {sg} body (train mode) on {tuple(x.shape)}')
    sgconvnext.tune_backends(models[sg].body, x, modes=('train',), warmup=0, runs=1)
    if not args.no_untuned:
        torch.manual_seed(0)
        models[sg + ' (untuned)'] = fpn_backbone(sg, **sg_kwargs).to(device)

    def loss_fn(model):
        return sum(v.mean() for v in model(x).values())
    res = time_and_peak(models, loss_fn, args, device)
    shape = f'{x.shape[0]}x{x.shape[-1]}x{x.shape[-2]} (' + ', '.join(f'{w}x{h}' for h, w in args.det_images) + ')'
    rows = [('det train step, s', shape, res[base][0], res[sg][0], TIME_GOAL),
            ('det train step, peak MiB', shape, res[base][1], res[sg][1], MEMORY_GOAL)]
    if not args.no_untuned:
        rows += [('det train step untuned, s', shape, res[base][0], res[sg + ' (untuned)'][0], TIME_GOAL),
                 ('det train step untuned, peak MiB', shape, res[base][1], res[sg + ' (untuned)'][1], MEMORY_GOAL)]
    return rows


def bench_seg(args, device) -> list:
    try:
        import segmentation_models_pytorch as smp
    except ImportError as e:
        log(f'seg: segmentation_models_pytorch is not importable ({e}); skipped')
        return [('seg train step', f'smp not importable: {e}', None, None, None)]
    base, sg = args.models
    s, b = args.seg_size, args.seg_batch
    models = {}
    for name in (base, sg):
        torch.manual_seed(0)
        extra = {'img_size': s} if name.startswith('sg') else {}
        models[name] = smp.FPN(encoder_name='tu-' + name, encoder_weights=None, classes=19, **extra).to(device)
    x = torch.randn(b, 3, s, s, device=device)
    target = torch.randint(0, 19, (b, s, s), device=device)
    log(f'seg: smp.FPN at {b}x{s}x{s}')
    res = time_and_peak(models, lambda model: F.cross_entropy(model(x), target), args, device)
    shape = f'{b}x{s}x{s}'
    return [('seg train step (smp.FPN), s', shape, res[base][0], res[sg][0], TIME_GOAL),
            ('seg train step (smp.FPN), peak MiB', shape, res[base][1], res[sg][1], MEMORY_GOAL)]


def _fmt(v) -> str:
    return 'n/a' if v is None else (f'{v:.1f}' if abs(v) >= 10 else f'{v:.3f}')


def make_report(rows, args, device) -> str:
    base, sg = args.models
    lines = [f'### Dense prediction: {sg} vs {base}', '',
             f'- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC',
             f'- machine: {describe_machine(device)}',
             f'- command: `{command_line()}`', f'- commit: {git_revision()}',
             f'- goal: time <= {TIME_GOAL:.2f}x and peak memory <= {MEMORY_GOAL:.2f}x {base}\'s '
             f'(ratio = {sg} / {base}); GMACs have no goal', '',
             f'| bench | shape (WxH) | {base} | {sg} | ratio | goal met |', '|---|---|---|---|---|---|']
    verdicts = []
    for bench, shape, a, b, goal in rows:
        ratio = b / a if a and b is not None else None
        met = '' if goal is None or ratio is None else ('yes' if ratio <= goal else f'no (> {goal:.2f}x)')
        if met:
            verdicts.append((bench, met == 'yes'))
        lines.append(f'| {bench} | {shape} | {_fmt(a)} | {_fmt(b)} | {"n/a" if ratio is None else f"{ratio:.2f}x"} '
                     f'| {met} |')
    tuned = [ok for bench, ok in verdicts if 'untuned' not in bench]
    if tuned:
        lines += ['', f'Goal {"met" if all(tuned) else "missed"} (tuned rows): '
                  + ', '.join(f'{bench}: {"met" if ok else "missed"}' for bench, ok in verdicts if 'untuned' not in bench)
                  + '.']
    return '\n'.join(lines) + '\n'


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = []
    for bench, fn in (('flops', bench_flops), ('det', bench_det), ('seg', bench_seg)):
        if bench in args.bench:
            rows += fn(args, device)
    report = make_report(rows, args, device)
    print(report, flush=True)
    if args.write:
        write_section(args.write, f'bench_dense:{args.section}', report)
        log(f'wrote {args.write} (section bench_dense:{args.section})')
    return rows


if __name__ == '__main__':
    main()
