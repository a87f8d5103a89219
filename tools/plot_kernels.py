#!/usr/bin/env python
"""Picture a model's 2-D token-mixer kernels, a row per stage, and the decay profile of one axis (PNG, pillow).

    python tools/plot_kernels.py                          # sgconvnext_tiny at init -> kernels_sgconvnext_tiny.png
    python tools/plot_kernels.py --model sgconvnext_tiny --checkpoint output/train/model_best.pth.tar --out k.png
    python tools/plot_kernels.py --model convnext_tiny              # ConvNeXt's 7x7 kernels, for comparison
    python tools/plot_kernels.py --sizes 224 448 --stage 1 --resize fixed   # one layer at two input sizes

Row i shows block --block of stage i: the first --channels channels' kernels. For SGConv2d that is the centred
kernel ``K[c] = kh[c] (outer) kw[c]`` at the map size the layer was built for (--img-size / reduction, or the
checkpoint's geometry), taps from -(H-1) to H-1; for a depthwise nn.Conv2d, its weights. Colour: red positive,
blue negative, white zero, intensity ``|k / max|**gamma`` per kernel (gamma < 1 lifts the small far taps into view).
With --sizes, row i instead shows block --block of stage --stage as applied at input size i (``materialize`` at
that stage's map size under the --resize policy); every tile spans its whole map, so "stretch" draws the same
picture at every size and "fixed" draws the built kernel shrinking into the middle of a larger map.

Below: the decay profile along the W axis of one stage (--profile-stage; with --sizes, of each size, over the
relative offset): ``|K[c, centre, offset]|`` divided by each channel's largest value, averaged over all channels
of the layer, on a log scale; dotted lines mark where SGConv's sub-kernels start (scales d, d, 2d, 4d, ... each
weighted ``decay**i``).

Image size (px): width = max(MIN_WIDTH, LABEL_WIDTH + channels * (cell + GAP) + MARGIN),
height = TITLE_HEIGHT + stages * (cell + GAP) + PROFILE_HEIGHT + MARGIN.
"""
import argparse
import os
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn

from bench.utils import create_model_for_size  # noqa: E402
import timm  # noqa: E402
import sgconvnext  # noqa: E402,F401  (registers the sgconvnext_* models)
from sgconvnext import SGConv2d  # noqa: E402
from sgconvnext.resize import DEFAULT_RESIZE, RESIZE_POLICIES  # noqa: E402
from sgconvnext.atomic import atomic_open  # noqa: E402

MARGIN, GAP, LABEL_WIDTH, TITLE_HEIGHT, PROFILE_HEIGHT, MIN_WIDTH = 8, 4, 112, 28, 200, 480
POSITIVE, NEGATIVE, WHITE = np.array([178, 24, 43]), np.array([33, 102, 172]), np.array([255, 255, 255])
LOG_FLOOR = 1e-4  # the profile's y axis spans LOG_FLOOR .. 1


def canvas_size(stages: int, channels: int, cell: int):
    """(width, height) of the picture, as documented above."""
    width = max(MIN_WIDTH, LABEL_WIDTH + channels * (cell + GAP) + MARGIN)
    return width, TITLE_HEIGHT + stages * (cell + GAP) + PROFILE_HEIGHT + MARGIN


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be a positive integer, got {value}')
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='sgconvnext_tiny', help='timm model name (default: sgconvnext_tiny)')
    p.add_argument('--checkpoint', help='weights to load (timm load_checkpoint: .pth, .pth.tar, .safetensors)')
    p.add_argument('--no-ema', action='store_true', help='load the checkpoint\'s plain weights, not its EMA ones')
    p.add_argument('--img-size', type=_positive, default=224, help='input size the model is built for (default: 224)')
    p.add_argument('--block', type=int, default=0, help='block of each stage to show (default: 0)')
    p.add_argument('--channels', type=_positive, default=8, help='channels shown per stage (default: 8)')
    p.add_argument('--cell', type=_positive, default=96, help='pixels per kernel picture (default: 96)')
    p.add_argument('--gamma', type=float, default=0.5, help='colour intensity |k/max|**gamma (default: 0.5)')
    p.add_argument('--profile-stage', type=int, default=0, help='stage whose decay profile is drawn (default: 0)')
    p.add_argument('--sizes', type=_positive, nargs='+', default=None, metavar='N',
                   help='draw one layer (--stage, --block) as applied at these input sizes, a row each')
    p.add_argument('--stage', type=int, default=0, help='the stage drawn with --sizes (default: 0)')
    p.add_argument('--resize', choices=RESIZE_POLICIES, default=None,
                   help=f'sgconvnext size policy (sg_resize; default: the model\'s, {DEFAULT_RESIZE})')
    p.add_argument('--seed', type=int, default=0, help='seed of a fresh init (default: 0)')
    p.add_argument('--out', help='PNG path (default: kernels_MODEL.png)')
    args = p.parse_args(argv)
    if not timm.is_model(args.model):
        p.error(f'unknown model {args.model!r} (not a timm model name; see timm.list_models())')
    if not args.gamma > 0:
        p.error(f'--gamma must be > 0, got {args.gamma}')
    args.out = args.out or f'kernels_{args.model}.png'
    return args


def build_model(name: str, img_size: int, checkpoint=None, use_ema=True, seed=0, resize=None) -> nn.Module:
    """The model without its classifier (``num_classes=0``): a checkpoint of any class count draws the same."""
    torch.manual_seed(seed)
    model = create_model_for_size(name, img_size, num_classes=0,
                                  **({} if resize is None else dict(sg_resize=resize)))
    if checkpoint:
        state = timm.models.load_state_dict(checkpoint, use_ema=use_ema)
        classifier = model.pretrained_cfg['classifier'] + '.'  # 'head.fc.' for ConvNeXt-style models
        model.load_state_dict({k: v for k, v in state.items() if not k.startswith(classifier)})
    return model.eval()


def stage_kernels(model: nn.Module, block: int = 0):
    """[(label, kernels (C, kh, kw) float64, mixer module)] for block ``block`` of each stage."""
    stages = getattr(model, 'stages', None)
    if stages is None:
        raise ValueError(f'{type(model).__name__} has no .stages: expected a ConvNeXt-style model')
    out = []
    for i, stage in enumerate(stages):
        blocks = getattr(stage, 'blocks', [])
        if not -len(blocks) <= block < len(blocks):
            raise ValueError(f'stage {i} has {len(blocks)} blocks, no block {block}')
        mixer = blocks[block].conv_dw
        with torch.no_grad():
            if isinstance(mixer, SGConv2d):
                h, w = mixer.l_max
                kernels = mixer.materialize(h, w).double()
                label = [f'stage {i}', f'{h}x{w} map', f'{2 * h - 1}x{2 * w - 1} taps']
            elif isinstance(mixer, nn.Conv2d) and mixer.groups == mixer.in_channels:
                kernels = mixer.weight[:, 0].double()
                label = [f'stage {i}', f'{kernels.shape[-2]}x{kernels.shape[-1]} conv']
            else:
                raise ValueError(f'stage {i} block {block}: conv_dw is a {type(mixer).__name__}, '
                                 f'not an SGConv2d or a depthwise Conv2d')
        out.append((label, kernels, mixer))
    return out


def size_kernels(model: nn.Module, sizes, stage: int = 0, block: int = 0):
    """[(label, kernels (C, kh, kw) float64, mixer)]: block ``block`` of ``stage`` as applied at each input size."""
    rows = stage_kernels(model, block)
    if not -len(rows) <= stage < len(rows):
        raise ValueError(f'--stage {stage}: the model has {len(rows)} stages')
    _, built, mixer = rows[stage]
    if not isinstance(mixer, SGConv2d):  # a fixed conv applies the same kernel at every size
        return [([f'input {size}', 'same kernel'], built, mixer) for size in sizes]
    reduction = model.feature_info[stage]['reduction']
    out = []
    for size in sizes:
        h = w = max(1, size // reduction)
        with torch.no_grad():
            kernels = mixer.materialize(h, w).double()
        out.append(([f'input {size}', f'{h}x{w} map', f'{2 * h - 1}x{2 * w - 1} taps'], kernels, mixer))
    return out


def colour(kernel: torch.Tensor, gamma: float) -> np.ndarray:
    """(kh, kw) -> (kh, kw, 3) uint8: white at 0, red / blue at +/- max, intensity |k/max|**gamma."""
    scale = kernel.abs().max().clamp_min(1e-30)
    v = (kernel / scale).numpy()
    t = (np.abs(v) ** gamma)[..., None]
    tint = np.where(v[..., None] >= 0, POSITIVE, NEGATIVE)
    return np.round(WHITE + t * (tint - WHITE)).astype(np.uint8)


def decay_profile(kernels: torch.Tensor) -> np.ndarray:
    """Mean over channels of |K[c, centre row, :]| / max_j |K[c, centre row, j]|."""
    row = kernels[:, kernels.shape[1] // 2].abs()
    return (row / row.max(dim=-1, keepdim=True).values.clamp_min(1e-30)).mean(0).numpy()


PROFILE_COLOURS = [tuple(POSITIVE.tolist()), tuple(NEGATIVE.tolist()), (40, 140, 40), (140, 80, 20)]


def draw_profile(draw: ImageDraw.ImageDraw, box, profiles, bounds, title: str, font) -> None:
    """Log-scale profiles [(values, legend)], each over its own offsets spread on the same width.

    One profile: x ticks are its offsets and dotted lines mark ``bounds`` (sub-kernel starts). Several (one
    layer at several map sizes): x is the offset relative to the map, -1 .. 1, and each line is labelled.
    """
    left, top, right, bottom = box
    draw.text((left, top), title, fill='black', font=font)
    x0, x1, y0, y1 = left + 48, right - 8, top + 18, bottom - 22
    draw.rectangle((x0, y0, x1, y1), outline='black')

    def px(i, n):
        return x0 + (x1 - x0) * (i / max(1, n - 1))

    def py(v):
        frac = (np.log10(max(v, LOG_FLOOR)) - np.log10(LOG_FLOOR)) / -np.log10(LOG_FLOOR)
        return y1 - (y1 - y0) * frac

    for exp in range(0, int(round(np.log10(LOG_FLOOR))) - 1, -1):
        y = py(10.0 ** exp)
        draw.line((x0 - 4, y, x0, y), fill='black')
        draw.text((left, y - 6), f'1e{exp}' if exp else '1', fill='black', font=font)
    n = len(profiles[0][0])
    centre = (n - 1) // 2
    if len(profiles) == 1:
        for start, _ in bounds[1:]:  # sub-kernel starts, both sides
            for i in (centre + start, centre - start):
                if 0 <= i < n:
                    for y in range(int(y0), int(y1), 6):
                        draw.line((px(i, n), y, px(i, n), y + 2), fill=(120, 120, 120))
        ticks, axis = ((0, f'{-centre}'), (centre, '0'), (n - 1, f'{n - 1 - centre}')), 'offset (W axis)'
    else:
        ticks, axis = ((0, '-1'), (centre, '0'), (n - 1, '1')), 'offset / map width (W axis)'
    for i, label in ticks:
        draw.line((px(i, n), y1, px(i, n), y1 + 4), fill='black')
        draw.text((px(i, n) - 6, y1 + 6), label, fill='black', font=font)
    draw.text(((x0 + x1) / 2 + 16, y1 + 6), axis, fill='black', font=font)
    for k, (values, legend) in enumerate(profiles):
        fill = PROFILE_COLOURS[k % len(PROFILE_COLOURS)]
        points = [(px(i, len(values)), py(float(v))) for i, v in enumerate(values)]
        if len(points) > 1:
            draw.line(points, fill=fill, width=2)
        if len(profiles) > 1:
            draw.text((x1 - 110, y0 + 4 + 14 * k), legend, fill=fill, font=font)


def render(model: nn.Module, title: str, channels: int = 8, cell: int = 96, gamma: float = 0.5, block: int = 0,
           profile_stage: int = 0, sizes=None, stage: int = 0) -> Image.Image:
    rows = stage_kernels(model, block) if sizes is None else size_kernels(model, sizes, stage, block)
    if sizes is None and not -len(rows) <= profile_stage < len(rows):
        raise ValueError(f'--profile-stage {profile_stage}: the model has {len(rows)} stages')
    channels = min(channels, min(k.shape[0] for _, k, _ in rows))
    width, height = canvas_size(len(rows), channels, cell)
    image = Image.new('RGB', (width, height), 'white')
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((MARGIN, MARGIN), title, fill='black', font=font)
    for r, (label, kernels, _) in enumerate(rows):
        top = TITLE_HEIGHT + r * (cell + GAP)
        for line, text in enumerate(label):
            draw.text((MARGIN, top + 4 + 14 * line), text, fill='black', font=font)
        for c in range(channels):
            tile = Image.fromarray(colour(kernels[c], gamma))
            upscale = tile.width <= cell and tile.height <= cell
            tile = tile.resize((cell, cell), Image.Resampling.NEAREST if upscale else Image.Resampling.BOX)
            image.paste(tile, (LABEL_WIDTH + c * (cell + GAP), top))
    box = (MARGIN, TITLE_HEIGHT + len(rows) * (cell + GAP), width - MARGIN, height - MARGIN)
    if sizes is None:
        label, kernels, mixer = rows[profile_stage]
        bounds = mixer.kernel_w.scale_bounds() if isinstance(mixer, SGConv2d) else [(0, 0)]
        draw_profile(draw, box, [(decay_profile(kernels), label[0])], bounds,
                     f'{label[0]} decay profile: mean over {kernels.shape[0]} channels of |k| / max, centre row '
                     '(dotted: sub-kernel starts)', font)
    else:
        draw_profile(draw, box, [(decay_profile(kernels), label[0]) for label, kernels, _ in rows], None,
                     f'stage {stage} decay profile at each size: mean over {rows[0][1].shape[0]} channels of '
                     '|k| / max, centre row', font)
    return image


def main(argv=None):
    args = parse_args(argv)
    try:
        model = build_model(args.model, args.img_size, args.checkpoint, not args.no_ema, args.seed, args.resize)
    except (RuntimeError, ValueError, OSError, KeyError) as e:
        raise SystemExit(f'plot_kernels.py: error: cannot build {args.model}'
                         + (f' from {args.checkpoint}' if args.checkpoint else '') + f': {e}')
    source = os.path.basename(args.checkpoint) if args.checkpoint else f'init, seed {args.seed}'
    what = f'block {args.block} of each stage' if args.sizes is None else \
        f'stage {args.stage} block {args.block} at sizes {", ".join(map(str, args.sizes))}'
    policy = f', {args.resize or DEFAULT_RESIZE}' if any(isinstance(m, SGConv2d) for m in model.modules()) else ''
    title = f'{args.model} ({source}{policy}): {what}, red +, blue -, |k/max|^{args.gamma:g}'
    try:
        image = render(model, title, args.channels, args.cell, args.gamma, args.block, args.profile_stage, args.sizes,
                       args.stage)
    except ValueError as e:
        raise SystemExit(f'plot_kernels.py: error: {e}')
    image_format = Image.registered_extensions().get(os.path.splitext(args.out)[1].lower())
    if image_format is None:
        raise SystemExit(f'plot_kernels.py: error: --out must end in an image extension such as .png, got {args.out!r}')
    with atomic_open(args.out, 'wb') as f:
        image.save(f, format=image_format, optimize=True)
    print(f'wrote {args.out} ({image.width}x{image.height})', file=sys.stderr)
    return args.out


if __name__ == '__main__':
    main()
