#!/usr/bin/env python
"""Params, GMACs (fvcore, FFTs counted), activations and img/s of timm models, side by side.

    python tools/benchmark.py                     # sgconvnext_tiny vs convnext_tiny: FLOPs + inference
    python tools/benchmark.py --models sgconvnext_atto convnext_atto --bench all --batch-size 8
    python tools/benchmark.py --img-size 224 384 512 1024 --bench flops          # resolution sweep
    python tools/benchmark.py --img-size 224 1024 --build-size 224 --bench all   # a 224 px model run at 1024 px
    python tools/benchmark.py --models sgconvnext_atto convnext_atto --models sgconvnext_nano convnext_nano
    python tools/benchmark.py --device cuda --amp bf16 --channels-last --compile --bench all --json rows.json
    python tools/benchmark.py --models sgconvnext_tiny --model-kwargs sg_backend=fft --bench flops  # another backend
    python tools/benchmark.py --models sgconvnext_tiny sgconvnext_tiny:sg_resize=fixed convnext_tiny --build-size 224
    python tools/benchmark.py --bench all --threads 1 --write docs/BENCHMARKS.md --section my-run   # record a table

Any timm model name works (importing sgconvnext registers the sgconvnext_* family). Models that take
``img_size`` (SGConvNeXt, ViTs) are built for each --img-size, or for --build-size and then run at each
--img-size as a checkpoint trained at that size is (SGConvNeXt kernels then meet other map sizes by their
``sg_resize`` policy; the backend table says which); the others are built once per size as is.

* GMACs: fvcore multiply-adds per image at batch 1, with sgconvnext.flops' handles (FFTs and complex
  products counted, see that module). "GMACs" is the inference forward (eval, no grad); "GMACs train"
  the forward as run when training. They differ only where the ops depend on grad mode: SGConv2d's
  "auto" backend picks per map size and grad mode (a table lists its picks per stage). Both are taken in the
  run's conditions (--channels-last, --amp) and after --sg-tune, so they show what the timed steps run.
* mixer GMACs: the part of GMACs spent in the blocks' token mixers (modules named ``conv_dw``).
* act. (M): fvcore activations (outputs of convs, matmuls, FFTs) per image.
* img/s: --warmup untimed steps, then the median of --steps timed steps per model, models interleaved
  step by step (so drifts in machine load hit all alike), synchronized on CUDA. Inference: eval mode,
  torch.no_grad(). Training: train mode, forward, cross-entropy on random labels, backward, SGD step.
* Ratios in parentheses are to the first model at the same image size. --models may be given several
  times: each group is timed (interleaved) and compared (ratios to its own first model) on its own.
* A model entry NAME:KEY=VALUE,KEY=VALUE gives that model its own timm.create_model kwargs, over
  --model-kwargs' (so one model can be timed under two settings, or beside a model that lacks the kwarg).
"""
import argparse
import ast
import contextlib
import difflib
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from bench.measure import auto_backends, measure_flops
from bench.memory import peak_memory_mb
from bench.plot import check_plot_path, plot_sweep
from bench.report import make_report
from bench.utils import create_model_for_size, interleaved_medians, log, split_model_entry, synchronize, write_section

import timm  # noqa: E402
import sgconvnext  # noqa: E402,F401  (registers the sgconvnext_* models)
from sgconvnext import SGConv2d  # noqa: E402
from sgconvnext.atomic import atomic_open  # noqa: E402

BENCHES = ('flops', 'infer', 'train')


def _img_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'image size must be a positive integer, got {text!r}')
    if value < 1:
        raise argparse.ArgumentTypeError(f'image size must be a positive integer, got {value}')
    return value


def _kwarg(text: str):
    key, sep, value = text.partition('=')
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f'model kwargs are KEY=VALUE pairs, got {text!r}')
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--models', nargs='+', action='append', default=None, metavar='NAME[:K=V,...]',
                   help='timm model names, each optionally with its own kwargs (sgconvnext_tiny:sg_resize=fixed); '
                        'ratios are to the first; repeat the flag for several groups '
                        '(default: sgconvnext_tiny convnext_tiny)')
    p.add_argument('--img-size', nargs='+', type=_img_size, default=[224], metavar='N',
                   help='square input sizes; several make a resolution sweep (default: 224)')
    p.add_argument('--build-size', type=_img_size, default=None, metavar='N',
                   help='build the models for N px and run them at every --img-size (default: built for each)')
    p.add_argument('--model-kwargs', nargs='+', type=_kwarg, default=[], metavar='KEY=VALUE',
                   help='extra timm.create_model kwargs for every model (e.g. sg_backend=fft drop_path_rate=0.1)')
    p.add_argument('--batch-size', type=int, default=None, help='batch size for timing (default: 8 on cpu, 64 on cuda)')
    p.add_argument('--device', default=None, help='cpu or cuda[:i] (default: cuda if available, else cpu)')
    p.add_argument('--amp', choices=('none', 'bf16', 'fp16'), default='none',
                   help='autocast dtype of the run (timing, FLOPs and the backend table)')
    p.add_argument('--channels-last', action='store_true',
                   help='channels_last model and inputs (timing, FLOPs and the backend table)')
    p.add_argument('--compile', action='store_true', help='torch.compile the model for timing (not for FLOPs)')
    p.add_argument('--compile-backend', default='inductor', help='torch.compile backend (default: inductor)')
    p.add_argument('--bench', nargs='+', choices=BENCHES + ('all',), default=['flops', 'infer'],
                   help='what to measure (default: flops infer)')
    p.add_argument('--warmup', type=int, default=None, help='untimed steps per model (default: 2 on cpu, 10 on cuda)')
    p.add_argument('--steps', type=int, default=None, help='timed steps per model (default: 5 on cpu, 30 on cuda)')
    p.add_argument('--threads', type=int, default=None,
                   help='torch CPU threads (default: torch\'s, one per core); 1 is steadier on a shared machine')
    p.add_argument('--sg-tune', action='store_true',
                   help='time SGConv2d\'s backends on this device for the timed input first (sgconvnext.tune_backends; '
                        'needs --bench infer or train: the modes it tunes)')
    p.add_argument('--plot', metavar='PATH', help='draw img/s and peak memory against --img-size, a line per model '
                   '(.png, .svg or .pdf; needs matplotlib: pip install -r requirements-plot.txt)')
    p.add_argument('--json', metavar='PATH', help='write the rows as a JSON list')
    p.add_argument('--write', metavar='PATH', help='write the report into this markdown file (e.g. docs/BENCHMARKS.md)')
    p.add_argument('--section', default=None, help='report section name in --write (key "benchmark:NAME")')
    args = p.parse_args(argv)
    check_args(p, args)
    return args


def check_args(p: argparse.ArgumentParser, args) -> None:
    """Resolve the defaults that depend on the device, and refuse what cannot run (p.error: one line, exit 2)."""
    args.model_kwargs = dict(args.model_kwargs)
    args.groups = args.models or [['sgconvnext_tiny', 'convnext_tiny']]
    args.models = [entry for group in args.groups for entry in group]
    args.specs = {}
    for entry in args.models:
        try:
            name, pairs = split_model_entry(entry)
        except ValueError as e:
            p.error(f'--models: {e}')
        args.specs[entry] = name, {**args.model_kwargs, **dict(_kwarg(kv) for kv in pairs)}
    unknown = [name for name, _ in args.specs.values() if not timm.is_model(name)]
    for group in args.groups:
        if len(set(group)) != len(group):
            p.error(f'--models names a model twice: {" ".join(group)}')
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        p.error(f'unknown model {name!r}' + (f' (did you mean {", ".join(close)}?)' if close else
                                              ' (not a timm model name; see timm.list_models())'))
    if args.device is None:
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    try:
        device = torch.device(args.device)
    except RuntimeError:
        p.error(f'--device must be cpu or cuda[:index], got {args.device!r}')
    if device.type not in ('cpu', 'cuda'):
        p.error(f'--device must be cpu or cuda[:index], got {args.device!r}')
    if device.type == 'cuda' and not torch.cuda.is_available():
        p.error('--device cuda was asked for but torch.cuda.is_available() is False')
    on_cuda = device.type == 'cuda'
    args.batch_size = args.batch_size if args.batch_size is not None else (64 if on_cuda else 8)
    args.warmup = args.warmup if args.warmup is not None else (10 if on_cuda else 2)
    args.steps = args.steps if args.steps is not None else (30 if on_cuda else 5)
    if args.threads is not None and args.threads < 1:
        p.error(f'--threads must be >= 1, got {args.threads}')
    if args.batch_size < 1:
        p.error(f'--batch-size must be >= 1, got {args.batch_size}')
    if args.steps < 1 or args.warmup < 0:
        p.error(f'--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}')
    args.bench = list(BENCHES) if 'all' in args.bench else [b for b in BENCHES if b in args.bench]
    if args.sg_tune and not any(b in args.bench for b in ('infer', 'train')):
        p.error('--sg-tune tunes the backends of the timed steps: give --bench infer, train or all')
    if args.section is not None and not args.write:
        p.error('--section names a section of --write PATH; give --write too')
    if args.plot is not None:
        try:
            check_plot_path(args.plot)
        except ValueError as e:
            p.error(f'--plot: {e}')


def create_model(name: str, img_size: int, device: torch.device, **kwargs):
    """timm model ``name``, built for ``img_size`` when it takes that argument."""
    return create_model_for_size(name, img_size, **kwargs).to(device)


def example_input(model, batch_size: int, img_size: int, device: torch.device) -> torch.Tensor:
    channels = (getattr(model, 'pretrained_cfg', None) or {}).get('input_size', (3,))[0]
    return torch.randn(batch_size, channels, img_size, img_size, device=device)


class _Recorder:
    """Wraps a step so its own durations are kept too (interleaved_medians only returns medians)."""

    def __init__(self, fn, device):
        self.fn, self.device, self.times = fn, device, []

    def __call__(self):
        synchronize(self.device)
        start = time.perf_counter()
        self.fn()
        synchronize(self.device)
        self.times.append(time.perf_counter() - start)

    def spread(self, warmup: int) -> float:
        timed = self.times[warmup:]
        return (max(timed) - min(timed)) / statistics.median(timed)


def autocast_for(args, device: torch.device, cache: bool = True):
    """The autocast context of --amp (a null context for none). ``cache=False`` for tracing (FLOP counts): autocast's
    cached casts of the weights would enter the traced graph as constants that require grad, which jit refuses."""
    amp_dtype = {'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}[args.amp]
    return torch.autocast(device.type, dtype=amp_dtype, cache_enabled=cache) if amp_dtype else contextlib.nullcontext()


def make_step(model, runner, x: torch.Tensor, mode: str, args, device: torch.device):
    """(step function, optimizer or None): an inference forward, or a training step (forward, cross-entropy on
    random labels, backward, SGD step)."""
    model.train(mode == 'train')
    if mode == 'infer':
        def step():
            with torch.no_grad(), autocast_for(args, device):
                runner(x)
        return step, None
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    target = torch.randint(0, max(1, getattr(model, 'num_classes', 1000)), (x.shape[0],), device=device)

    def step():
        with autocast_for(args, device):
            out = runner(x)
            loss = F.cross_entropy(out.float(), target) if out.dim() == 2 else out.float().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step, optimizer


def time_steps(models: dict, x: torch.Tensor, mode: str, args, device: torch.device) -> dict:
    """{name: (seconds per step, spread, peak MiB of one more step)} for 'infer' or 'train' steps, models
    interleaved; the peak memory of each model is taken after the timed steps, one model at a time."""
    steps = {name: make_step(model, runner, x, mode, args, device) for name, (model, runner) in models.items()}
    recorders = {name: _Recorder(step, device) for name, (step, _) in steps.items()}
    log(f'  timing {mode}: {args.warmup} warm-up + {args.steps} timed steps per model, interleaved'
        + (' (first calls compile)' if args.compile else ''))
    medians = interleaved_medians(recorders, device, warmup=args.warmup, runs=args.steps)
    peaks = {name: peak_memory_mb(step, device, models[name][0], optimizer)
             for name, (step, optimizer) in steps.items()}
    return {name: (medians[name], recorders[name].spread(args.warmup), peaks[name]) for name in steps}


def tune(models: dict, rows: list, x: torch.Tensor, args, device: torch.device) -> None:
    """--sg-tune: time SGConv2d's backends of every sgconvnext model for ``x`` (its layout, --amp) and keep the
    fastest; the table goes into the model's row."""
    from sgconvnext import format_backend_table, tune_backends
    for row in rows:
        model = models.get(row['model'], (None,))[0]
        if model is None or not any(isinstance(m, SGConv2d) for m in model.modules()):
            continue
        log(f"[{row['img_size']}px] {row['model']}: tuning SGConv2d backends")
        modes = [m for m in ('train', 'infer') if m in args.bench]
        with autocast_for(args, device):
            table = tune_backends(model, x, modes=modes)
        row['sg_tuned'] = format_backend_table(table)


def build_group(args, group: list, index: int, img_size: int, device: torch.device):
    """(rows, {name: (model, runner)}, timed input) for one --models group at one image size: the models in the
    layout of the run (--channels-last), each checked to take the size."""
    rows, models = [], {}
    for name in group:  # a --models entry: the model's name, with its own kwargs if any
        model_name, model_kwargs = args.specs[name]
        log(f'[{img_size}px] {name}: building')
        try:
            model = create_model(model_name, args.build_size or img_size, device, **model_kwargs)
            if args.channels_last:
                model = model.to(memory_format=torch.channels_last)
            x = example_input(model, args.batch_size, img_size, device)
            with torch.no_grad():
                model.eval()(x[:1])  # a clear error now if the model cannot take this size
        except Exception as e:  # noqa: BLE001 -- one line naming the model and size, not a traceback
            raise SystemExit(f'benchmark.py: error: {name} at --img-size {img_size}: {type(e).__name__}: {e}')
        rows.append({'model': name, 'model_name': model_name, 'model_kwargs': model_kwargs, 'group': index,
                     'img_size': img_size, 'build_size': args.build_size or img_size, 'batch_size': args.batch_size,
                     'device': str(device), 'amp': args.amp, 'channels_last': args.channels_last,
                     'compile': args.compile, 'params': sum(p.numel() for p in model.parameters())})
        rows[-1]['params_m'] = rows[-1]['params'] / 1e6
        models[name] = (model, torch.compile(model, backend=args.compile_backend) if args.compile else model)
    x = example_input(next(iter(models.values()))[0], args.batch_size, img_size, device)
    return rows, models, x.contiguous(memory_format=torch.channels_last) if args.channels_last else x


def run_group(args, group: list, index: int, img_size: int, device: torch.device) -> list:
    """Rows for every model of one --models group at one image size. The backend table and the FLOPs are taken
    after --sg-tune, on the timed input under --amp: what the timed steps run."""
    rows, models, x = build_group(args, group, index, img_size, device)
    if args.sg_tune:
        tune(models, rows, x, args, device)
    for row in rows:
        model = models[row['model']][0]
        row['auto_backends'] = auto_backends(model, x, lambda: autocast_for(args, device))
        if 'flops' in args.bench:
            log(f"[{img_size}px] {row['model']}: counting FLOPs")
            with autocast_for(args, device, cache=False):
                row.update(measure_flops(model, x))
    for mode in ('infer', 'train'):
        if mode in args.bench:
            log(f'[{img_size}px] timing {mode} at batch {args.batch_size}')
            timings = time_steps(models, x, mode, args, device)
            for row in rows:
                seconds, spread, peak = timings[row['model']]
                row[f'{mode}_ms_per_step'] = seconds * 1e3
                row[f'{mode}_img_s'] = args.batch_size / seconds
                row[f'{mode}_spread'] = spread
                row[f'{mode}_peak_mb'] = peak
    return rows


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        load_before = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
        rows = []
        for img_size in args.img_size:
            for index, group in enumerate(args.groups):
                rows += run_group(args, group, index, img_size, device)
        load_after = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
        report = make_report(rows, args, device, (load_before, load_after))
    finally:
        torch.set_num_threads(threads)
    print(report, flush=True)
    if args.plot:
        plot_sweep(rows, args.plot, f'{device.type}, batch {args.batch_size}')
        log(f'wrote {args.plot}')
    if args.json:
        with atomic_open(args.json) as f:
            json.dump(rows, f, indent=1)
        log(f'wrote {args.json}')
    if args.write:
        section = args.section or f'{device.type}:{"-".join(args.models)}:{"-".join(map(str, args.img_size))}'
        write_section(args.write, f'benchmark:{section}', report)
        log(f'wrote {args.write} (section benchmark:{section})')
    return rows


if __name__ == '__main__':
    main()
