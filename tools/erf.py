#!/usr/bin/env python
"""Effective receptive field (ERF) of a timm model, the way RepLKNet measures it (Ding et al. 2022, sec. 5).

    python tools/erf.py --model convnext_atto --checkpoint output/train/last.pth.tar --data-dir data/fmnist \\
        --img-size 96 --out erf.png --results-file erf.json
    python tools/erf.py --model sgconvnext_atto --data-dir data/fmnist --img-size 96 --stage 3 --out erf.png

For each of --num-images images of --data-dir's --split (resized whole to the model's input size, normalized as
the model was trained): the stage's output ``F`` (``forward_intermediates``, (1, C, h, w)), the scalar
``sum_c relu(F[0, c, h // 2, w // 2])`` (the centre cell), and the gradient of that scalar w.r.t. the input image.
The contribution map is the positive part of that gradient summed over the input channels and the images
((H, W), ``contribution_map``). Its high-contribution area ratio at t (``area_ratios``) is the area of the
smallest centred square (odd side) holding more than a share t of the map, over the image's area, computed as
RepLKNet does on the map scaled by ``log10(1 + map)`` and then to a maximum of 1 (so a few strong pixels do not
hide the tail): a model that uses more of the image has larger ratios. Thresholds: 20, 30, 50 and 99 %.

Also ``support_side``: the side of the smallest centred square that holds every nonzero gradient, the receptive field
the traced images reach (the theoretical one when no product on the path is zero or underflows: at init pass
``--model-kwargs ls_init_value=1``, as ConvNeXt's 1e-6 layer scales underflow float32 over a few blocks). Prints the ratios
(and writes them with --results-file as JSON); --out draws the scaled map (PNG; needs
matplotlib: pip install -r requirements-plot.txt); --matrix saves the raw map (.npy) for other plots.
"""
import argparse
import json
import os
import sys
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import sgconvnext  # noqa: F401,E402  (registers sgconvnext_* with timm)
from sgconvnext.atomic import atomic_open  # noqa: E402
from sgconvnext.training.config import CLIError, run_cli  # noqa: E402

THRESHOLDS = (0.2, 0.3, 0.5, 0.99)

__all__ = ['THRESHOLDS', 'centre_gradient', 'contribution_map', 'scaled', 'area_ratios', 'support_side', 'stage_output',
           'save_png']


def centre_gradient(forward, image: torch.Tensor) -> torch.Tensor:
    """(C_in, H, W): d/d image of ``sum_c relu(forward(image)[0, c, h // 2, w // 2])``; image (1, C_in, H, W)."""
    image = image.detach().clone().requires_grad_(True)
    out = forward(image)
    if out.ndim != 4:
        raise ValueError(f'the ERF needs a feature map (1, C, h, w) from the model, got shape {tuple(out.shape)}')
    centre = torch.relu(out[0, :, out.shape[-2] // 2, out.shape[-1] // 2]).sum()
    (grad,) = torch.autograd.grad(centre, image)
    return grad[0]


def contribution_map(forward, images) -> np.ndarray:
    """(H, W) float64: the positive part of each image's centre gradient, summed over channels and images."""
    total = None
    for image in images:
        grad = torch.relu(centre_gradient(forward, image)).sum(0).double()
        total = grad if total is None else total + grad
    if total is None:
        raise ValueError('the ERF needs at least one image, got none')
    return total.numpy()


def scaled(data: np.ndarray) -> np.ndarray:
    """RepLKNet's scaling: ``log10(1 + map)``, then divided by its maximum (an all-zero map stays zero)."""
    data = np.log10(1 + np.asarray(data, np.float64))
    peak = data.max()
    return data / peak if peak > 0 else data


def area_ratios(data: np.ndarray, thresholds=THRESHOLDS) -> dict:
    """{t: (side, area ratio)}: the smallest centred odd square holding more than a share t of ``scaled(data)``.

    A square that would leave the map is clipped to it; when no square holds more than t (t near 1 with mass on
    the border) the whole map counts: side max(H, W), ratio 1.
    """
    data = scaled(data)
    h, w = data.shape
    total = data.sum()
    if total <= 0:
        raise ValueError('the contribution map is zero everywhere: the centre output does not depend on the input')
    result = {}
    for t in thresholds:
        result[t] = (max(h, w), 1.0)
        for r in range(max(h, w) // 2 + 1):
            box = data[max(0, h // 2 - r):h // 2 + r + 1, max(0, w // 2 - r):w // 2 + r + 1]
            if box.sum() / total > t:
                result[t] = (2 * r + 1, box.size / data.size)
                break
    return result


def support_side(data: np.ndarray) -> int:
    """The side of the smallest centred square holding every nonzero entry: the receptive field these inputs
    reach (the theoretical one when no product on the path is zero or underflows), clipped to the map."""
    h, w = data.shape
    rows, cols = np.nonzero(data)
    if not len(rows):
        return 0
    r = max(np.abs(rows - h // 2).max(), np.abs(cols - w // 2).max())
    return min(2 * int(r) + 1, max(h, w))


def stage_output(model, stage: int):
    """``image -> model's stage output`` through timm's forward_intermediates (stage in 0 .. stages - 1)."""
    stages = len(getattr(model, 'feature_info', []) or []) or None
    if not hasattr(model, 'forward_intermediates'):
        raise CLIError(f'{type(model).__name__} has no forward_intermediates; the ERF needs a timm model with it')
    if stages is not None and not 0 <= stage < stages:
        raise CLIError(f'--stage must be in 0..{stages - 1} for this model, got {stage}')
    return lambda x: model.forward_intermediates(x, indices=[stage], intermediates_only=True)[0]


def check_centred(forward, input_size, stage: int) -> None:
    """Refuse a stage map with an even side: its centre cell's field is not centred on the image's centre."""
    with torch.no_grad():
        h, w = forward(torch.zeros(1, *input_size)).shape[-2:]
    if h % 2 == 0 or w % 2 == 0:
        stride = input_size[-1] // w
        raise CLIError(f'--img-size {input_size[-1]} gives stage {stage} a {h}x{w} map; the squares are centred on '
                       f'the image, so the traced centre cell must be too: pick a size whose stage map has odd sides, '
                       f'e.g. --img-size {stride * (w + 1 if w % 2 == 0 else w)}')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', required=True, help='timm model name (sgconvnext_* after import sgconvnext)')
    p.add_argument('--checkpoint', default='', help='training checkpoint or state dict (default: the init)')
    p.add_argument('--data-dir', required=True, help='image folder (ImageFolder layout: SPLIT/<class>/<image>)')
    p.add_argument('--split', default='val')
    p.add_argument('--num-images', type=int, default=50)
    p.add_argument('--img-size', type=int, default=None, help='input size (default: the training size)')
    p.add_argument('--stage', type=int, default=-1, help='the stage whose centre output is traced (default: last)')
    p.add_argument('--num-classes', type=int, default=None)
    p.add_argument('--model-kwargs', nargs='*', default=[], metavar='K=V', help='e.g. sg_resize=fixed')
    p.add_argument('--seed', type=int, default=0, help="the init's seed when there is no --checkpoint")
    p.add_argument('--out', default='', help='PNG of the scaled map')
    p.add_argument('--matrix', default='', help='.npy of the raw map')
    p.add_argument('--results-file', default='', help='JSON with the area ratios')
    args = p.parse_args(argv)
    if args.num_images < 1:
        p.error(f'--num-images must be >= 1, got {args.num_images}')
    return args


def load(args):
    """(model in eval mode, eval data config) as tools/validate.py builds them; the seeded init without a checkpoint."""
    from timm.utils import ParseKwargs
    from validate import _load, eval_data_config, load_model
    from sgconvnext.training.model import create_model_checked
    parsed = argparse.Namespace()
    ParseKwargs(None, 'model_kwargs')(None, parsed, args.model_kwargs)
    options = SimpleNamespace(model=args.model, pretrained=False, checkpoint=args.checkpoint, use_ema=False,
                              model_kwargs=getattr(parsed, 'model_kwargs', {}), in_chans=None,
                              num_classes=args.num_classes, gp=None, img_size=args.img_size, input_size=None,
                              crop_pct=1.0, crop_mode=None, interpolation=None, mean=None, std=None)
    torch.manual_seed(args.seed)
    if args.checkpoint:
        checkpoint, train_args = _load(args.checkpoint)
        model, _ = load_model(options, checkpoint, train_args)
    else:
        size = (args.img_size,) * 2 if args.img_size else None
        kwargs = {} if args.num_classes is None else dict(num_classes=args.num_classes)
        model, train_args = create_model_checked(args.model, img_size=size, model_kwargs=options.model_kwargs,
                                                 **kwargs), None
    return model.eval(), eval_data_config(options, train_args, model)


def images_of(args, data_config):
    from timm.data import create_transform
    from sgconvnext.training.data import create_checked_dataset
    mode = 'RGB' if data_config['input_size'][0] == 3 else 'L'
    dataset = create_checked_dataset('', args.data_dir, args.split, is_training=False, flag='--split',
                                     input_img_mode=mode)
    dataset.transform = create_transform(data_config['input_size'], interpolation=data_config['interpolation'],
                                         mean=data_config['mean'], std=data_config['std'], crop_pct=1.0)
    step = max(1, len(dataset) // args.num_images)  # spread over the classes (ImageFolder sorts by class)
    return [dataset[i][0].unsqueeze(0) for i in range(0, len(dataset), step)[:args.num_images]]


def save_png(fig, path: str, colours: int = 128) -> None:
    """A matplotlib Figure as a palette PNG of ``colours`` colours, written whole or not at all (the maps' noise
    makes full-colour PNGs large)."""
    import io
    from PIL import Image
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png')
    buffer.seek(0)
    with atomic_open(path, 'wb') as f:
        Image.open(buffer).convert('RGB').quantize(colours).save(f, format='PNG')


def draw(path: str, data: np.ndarray, title: str) -> None:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise CLIError('--out needs matplotlib, an optional extra: pip install -r requirements-plot.txt') from None
    fig = Figure(figsize=(3.2, 3.0), dpi=100)
    ax = fig.add_subplot()
    im = ax.imshow(scaled(data), cmap='pink', vmin=0, vmax=1, interpolation='nearest')
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    save_png(fig, path)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', torch.get_num_threads())))
    model, data_config = load(args)
    stages = len(getattr(model, 'feature_info', []) or [])
    if not stages or not -stages <= args.stage < stages:
        raise CLIError(f'--stage must be in -{stages}..{stages - 1} for {args.model} ({stages} stages), '
                       f'got {args.stage}')
    stage = args.stage % stages
    forward = stage_output(model, stage)
    check_centred(forward, data_config['input_size'], stage)
    images = images_of(args, data_config)
    data = contribution_map(forward, images)
    ratios = area_ratios(data)
    results = dict(model=args.model, checkpoint=args.checkpoint or 'init', stage=stage,
                   input_size=list(data_config['input_size']), images=len(images),
                   **{f'area_ratio_t{round(100 * t)}': round(r, 4) for t, (_, r) in ratios.items()},
                   **{f'side_t{round(100 * t)}': s for t, (s, _) in ratios.items()},
                   support_side=support_side(data))
    print(json.dumps(results))
    if args.results_file:
        with atomic_open(args.results_file) as f:
            json.dump(results, f, indent=1)
    if args.matrix:
        with atomic_open(args.matrix, 'wb') as f:
            np.save(f, data)
    if args.out:
        name = os.path.basename(os.path.dirname(args.checkpoint)) if args.checkpoint else 'init'
        draw(args.out, data, f'{args.model} ({name}), stage {stage}\n'
                             f'area ratio t=20%: {ratios[0.2][1]:.3f}, t=99%: {ratios[0.99][1]:.3f}')


if __name__ == '__main__':
    run_cli(main)
