#!/usr/bin/env python3
"""Validate a checkpoint (model or EMA weights) at any resolution; print top-1 / top-5 and save them as JSON.

    python tools/validate.py --checkpoint output/train/RUN/model_best.pth.tar --data-dir /data/imagenet --use-ema
    python tools/validate.py --checkpoint RUN/last.pth.tar --data-dir /data/imagenet --img-size 288 --crop-pct 1.0 \\
        --results-file results.json

Flags have the names and meanings of timm's validate.py, with three differences: --model defaults to
the model the checkpoint was trained as (timm: dpn92), --device to cuda when available, else cpu
(timm: cuda), and --results-format to json (timm: csv). The model is built the way it was trained
(the checkpoint's args: img_size, --model-kwargs, classes); the eval resolution, crop and
interpolation default to the training ones too, and --img-size / --crop-pct / --interpolation
override them. sgconvnext kernels keep the geometry they were trained with and meet another --img-size by
the model's size policy (``--model-kwargs sg_resize=stretch|fixed``; default: the training run's, else
stretch, which resamples them to span the map; fixed keeps their pixel extent, zero past it).
"""
import csv
import json
import logging
import os
import sys
from collections import OrderedDict

import torch
from timm.data import create_loader, resolve_data_config
from timm.models import clean_state_dict
from timm.utils import FormatterNoInfo, ParseKwargs, random_seed

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout: no pip install needed
import sgconvnext  # noqa: F401,E402  (registers sgconvnext_* with timm)
from sgconvnext import SGConv2d  # noqa: E402
from sgconvnext.atomic import atomic_open  # noqa: E402
from sgconvnext.training.checkpoint import load_checkpoint_file  # noqa: E402
from sgconvnext.training.config import CLIError, OneLineErrorParser, run_cli  # noqa: E402
from sgconvnext.training.data import create_checked_dataset  # noqa: E402
from sgconvnext.training.eval import evaluate  # noqa: E402
from sgconvnext.training.model import create_model_checked, setup_backends  # noqa: E402
from sgconvnext.training.optim import create_amp  # noqa: E402

_logger = logging.getLogger('validate')


parser = OneLineErrorParser(description='Validate a checkpoint on an ImageNet-style val set (timm validate.py flags).')
add = parser.add_argument
add('data', nargs='?', metavar='DIR', help='path to dataset (positional is deprecated, use --data-dir)')
add('--data-dir', metavar='DIR', help='dataset root (an image folder with a val/ folder, or the val folder)')
add('--dataset', default='', metavar='NAME', help='dataset type + name ("<type>/<name>"); empty: folder or tar')
add('--split', default='validation', metavar='NAME', help='dataset split (default: validation, finds val/ too)')
add('--num-samples', type=int, default=None, metavar='N', help='samples in the split, for IterableDatasets')
add('--dataset-download', action='store_true', default=False, help='allow download of torch/ and tfds/ datasets')
add('--class-map', default='', metavar='FILENAME', help='path to class to idx mapping file')
add('--input-img-mode', default=None, help='dataset image conversion mode for input images')
add('--model', '-m', default=None, metavar='NAME', help='model name (default: the checkpoint\'s)')
add('--pretrained', action='store_true', help='use pretrained weights (the default without --checkpoint)')
add('--checkpoint', default='', metavar='PATH', help='training checkpoint (or plain state dict) to validate')
add('--use-ema', action='store_true', help='use the EMA weights of the checkpoint')
add('-j', '--workers', type=int, default=4, metavar='N', help='data loading workers (default: 4)')
add('-b', '--batch-size', type=int, default=256, metavar='N', help='batch size (default: 256)')
add('--img-size', type=int, default=None, metavar='N', help='eval image size (default: the training size)')
add('--in-chans', type=int, default=None, metavar='N', help='image input channels (default: 3)')
add('--input-size', type=int, nargs=3, default=None, metavar='N', help='eval input dims (d h w)')
add('--crop-pct', type=float, default=None, metavar='N', help='center crop percent (default: the training one)')
add('--crop-mode', default=None, metavar='N', help='crop mode: squash, border or center (model default)')
add('--mean', type=float, nargs='+', default=None, metavar='MEAN', help='override dataset mean')
add('--std', type=float, nargs='+', default=None, metavar='STD', help='override dataset std')
add('--interpolation', default='', metavar='NAME', help='image resize interpolation (default: the training one)')
add('--num-classes', type=int, default=None, help='number of classes (default: the checkpoint\'s)')
add('--gp', default=None, metavar='POOL', help='global pool type (model default if None)')
add('--log-freq', type=int, default=10, metavar='N', help='batches between progress lines (default: 10)')
add('--no-prefetcher', action='store_true', default=False, help='disable the fast prefetcher')
add('--pin-mem', action='store_true', default=False, help='pin CPU memory in the DataLoader')
add('--channels-last', action='store_true', default=False, help='use channels_last memory layout')
add('--device', default=None, help='device (default: cuda when available, else cpu)')
add('--amp', action='store_true', default=False, help='mixed precision (autocast)')
add('--amp-dtype', default='float16', help='AMP dtype: float16 or bfloat16')
add('--model-kwargs', nargs='*', default={}, action=ParseKwargs, help='extra model kwargs, key=value')
add('--sg-tune', action='store_true', help='time SGConv2d\'s backends for an eval batch first and run the fastest '
    '(sgconvnext.tune_backends)')
add('--sg-backend-table', default='', metavar='PATH', help='apply a backend table saved on this machine '
    '(sgconvnext.save_backend_table)')
add('--torchcompile', nargs='?', type=str, default=None, const='inductor', help='torch.compile with this backend')
add('--torchcompile-mode', default=None, help='torch.compile mode')
add('--results-file', default='', metavar='FILENAME', help='write the results here')
add('--results-format', default='json', help='results file format: json or csv (default: json)')
add('--seed', type=int, default=42, metavar='S', help='random seed (default: 42)')


def _load(path: str):
    """(weights-bearing dict, training args or None) from a training checkpoint or a plain state dict."""
    checkpoint = load_checkpoint_file(path, flag='--checkpoint')
    if not isinstance(checkpoint, dict):
        raise CLIError(f'{path} holds a {type(checkpoint).__name__}, not a state dict or a training checkpoint')
    return checkpoint, checkpoint.get('args')


def _weights(checkpoint: dict, path: str, use_ema: bool) -> dict:
    if use_ema:
        for key in ('state_dict_ema', 'model_ema'):
            if checkpoint.get(key) is not None:
                return checkpoint[key]
        raise CLIError(f'{path} has no EMA weights (trained without --model-ema); drop --use-ema')
    for key in ('state_dict', 'model'):
        if key in checkpoint:
            return checkpoint[key]
    return checkpoint


def _train_input_size(train_args):
    """The training input size (C, H, W) recorded in a checkpoint's args, or None."""
    if train_args is None:
        return None
    if getattr(train_args, 'input_size', None):
        return tuple(train_args.input_size)
    if getattr(train_args, 'img_size', None):
        return (getattr(train_args, 'in_chans', None) or 3, train_args.img_size, train_args.img_size)
    return None


def main(argv=None):
    args = parser.parse_args(argv)
    device = setup(args)
    checkpoint, train_args = _load(args.checkpoint) if args.checkpoint else (None, None)
    model, model_name = load_model(args, checkpoint, train_args)
    param_count = sum(p.numel() for p in model.parameters())
    data_config = eval_data_config(args, train_args, model)
    model = model.to(device).eval()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp_autocast, _ = create_amp(args, device)
    args.model = model_name
    setup_backends(args, model, data_config['input_size'], device, amp_autocast, modes=('infer',))
    if args.torchcompile:
        model = torch.compile(model, backend=args.torchcompile, mode=args.torchcompile_mode)

    dataset = create_checked_dataset(
        args.dataset, args.data_dir, args.split, is_training=False, flag='--split', class_map=args.class_map,
        download=args.dataset_download, num_samples=args.num_samples,
        input_img_mode=args.input_img_mode or ('RGB' if data_config['input_size'][0] == 3 else 'L'))
    loader = create_loader(
        dataset, input_size=data_config['input_size'], batch_size=args.batch_size, is_training=False,
        use_prefetcher=not args.no_prefetcher, interpolation=data_config['interpolation'],
        mean=data_config['mean'], std=data_config['std'], num_workers=args.workers,
        crop_pct=data_config['crop_pct'], crop_mode=data_config['crop_mode'], pin_memory=args.pin_mem,
        device=device)
    metrics = evaluate(model, loader, device, amp_autocast=amp_autocast, channels_last=args.channels_last,
                       log_interval=args.log_freq)

    results = OrderedDict(
        model=model_name,
        checkpoint=args.checkpoint or 'pretrained',
        weights='ema' if args.use_ema else 'model',
        top1=round(metrics['top1'], 4), top1_err=round(100 - metrics['top1'], 4),
        top5=round(metrics['top5'], 4), top5_err=round(100 - metrics['top5'], 4),
        loss=round(metrics['loss'], 6),
        num_samples=len(dataset),
        img_size=data_config['input_size'][-1],
        crop_pct=data_config['crop_pct'],
        interpolation=data_config['interpolation'],
        param_count=round(param_count / 1e6, 3),
    )
    resize = {m.resize for m in model.modules() if isinstance(m, SGConv2d)}
    if resize:
        results['sg_resize'] = '/'.join(sorted(resize))
    _logger.info(f' * Acc@1 {results["top1"]:.3f} ({results["top1_err"]:.3f})  '
                 f'Acc@5 {results["top5"]:.3f} ({results["top5_err"]:.3f})')
    print(json.dumps(results, indent=4))
    if args.results_file:
        write_results(results, args.results_file, args.results_format)
    return results


def setup(args) -> torch.device:
    """Logging, the checks on flags that need no model, the seed; the device to run on."""
    handler = logging.StreamHandler()
    handler.setFormatter(FormatterNoInfo())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    args.data_dir = args.data_dir or args.data
    if args.results_format not in ('json', 'csv'):
        raise CLIError(f"--results-format must be json or csv, got '{args.results_format}'")
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise CLIError(f'--device {args.device} but CUDA is not available here; pass --device cpu')
    random_seed(args.seed)
    return device


def load_model(args, checkpoint, train_args):
    """(the model built as it was trained, with the checkpoint's model or EMA weights; its name)."""
    model_name = args.model or (checkpoint or {}).get('arch') or getattr(train_args, 'model', None)
    if not model_name:
        raise CLIError('pass --model NAME (the checkpoint does not say which model it is)')
    train_size = _train_input_size(train_args)
    model = create_model_checked(
        model_name,
        pretrained=args.pretrained or not args.checkpoint,
        img_size=train_size[1:] if train_size else None,  # sgconvnext: the size its kernels were trained for
        model_kwargs={**(getattr(train_args, 'model_kwargs', None) or {}), **args.model_kwargs},
        in_chans=args.in_chans or (train_size[0] if train_size else None),
        num_classes=args.num_classes or getattr(train_args, 'num_classes', None),
        global_pool=args.gp,
    )
    if checkpoint is not None:
        try:
            model.load_state_dict(clean_state_dict(_weights(checkpoint, args.checkpoint, args.use_ema)))
        except (RuntimeError, ValueError) as e:
            raise CLIError(f'{args.checkpoint} does not fit {model_name} ({" ".join(str(e).split())[:300]}); '
                           f'pass the --model / --num-classes / --model-kwargs it was trained with') from None
    return model, model_name


def eval_data_config(args, train_args, model) -> dict:
    """Eval preprocessing: the command line, else the training run's, else the model's defaults."""
    data_args = {k: getattr(train_args, k, None) for k in ('input_size', 'img_size', 'in_chans', 'crop_pct',
                                                           'interpolation', 'mean', 'std')}
    if args.img_size or args.input_size:
        data_args.update(input_size=None, img_size=None)
    data_args.update({k: v for k, v in vars(args).items() if k in (*data_args, 'crop_mode') and v})
    return resolve_data_config(data_args, model=model, verbose=True)


def write_results(results: dict, path: str, results_format: str) -> None:
    """The results as one JSON object or a one-row CSV, written whole or not at all."""
    if results_format == 'csv':
        with atomic_open(path, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=list(results))
            writer.writeheader()
            writer.writerow(results)
    else:
        with atomic_open(path) as f:
            json.dump(results, f, indent=4)


if __name__ == '__main__':
    run_cli(main)
