#!/usr/bin/env python
"""How much an image's backbone features change when its batch is padded to a larger canvas, per size policy.

    python tools/probe_padding.py --threads 1            # 800x1216 alone vs inside 1088x1344, sgconvnext_atto

The image (random pixels) runs alone on its own canvas and zero-padded at the top left of a larger one, as
torchvision batches it. Reported: the largest difference of each stage's features over the image's own canvas,
relative to the features' largest value. There are no trained detection weights here: biases and layer scales are
drawn at random (a fresh model's zero biases and 1e-6 layer scales write almost nothing into the padding, which
hides the effect), so the numbers show which policies are invariant, not a trained model's exact gaps.
"""
import argparse

import torch

import bench  # noqa: F401  (puts the repository root on sys.path)
from sgconvnext.dense import fpn_backbone  # noqa: E402

POLICIES = {
    'sgconvnext, dense default (canvas 1344, fixed, pad mask)': ('sgconvnext_atto', dict(canvas=1344)),
    'sgconvnext, fixed for 1344, no pad mask': ('sgconvnext_atto', dict(canvas=1344, pad_mask=False)),
    'sgconvnext, built for 224, stretch, no pad mask': ('sgconvnext_atto', dict(img_size=224, sg_resize='stretch',
                                                                               sg_load='saved', pad_mask=False)),
    'sgconvnext, built for 224, fixed, pad mask': ('sgconvnext_atto', dict(img_size=224, sg_resize='fixed')),
    'convnext, pad mask': ('convnext_atto', dict()),
    'convnext, no pad mask': ('convnext_atto', dict(pad_mask=False)),
}


def trained_like(backbone):
    """Random biases and layer scales (module docstring): what a trained model writes into the padding."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in backbone.named_parameters():
            if name.endswith('bias'):
                p.normal_(0, 0.2)
            elif name.endswith('gamma'):
                p.normal_(0.5, 0.1)
    return backbone.eval()


def body_features(backbone, x):
    """The body's features (list of (B, C_i, H_i, W_i)) as the backbone's forward computes them (mask armed)."""
    out = []
    handle = backbone.body.register_forward_hook(lambda m, i, o: out.extend(o))
    with torch.no_grad():
        backbone(x)
    handle.remove()
    return out


def region_gaps(backbone, image, padded):
    """Per stage: the largest difference of the body's features over ``image``'s own canvas, alone (1, 3, h, w) vs
    inside ``padded`` (1, 3, H, W), relative to the features' largest value."""
    return [((a - b[..., :a.shape[-2], :a.shape[-1]]).abs().max() / a.abs().max()).item()
            for a, b in zip(body_features(backbone, image), body_features(backbone, padded))]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--image', type=int, nargs=2, default=(800, 1216), metavar=('H', 'W'))
    p.add_argument('--canvas', type=int, nargs=2, default=(1088, 1344), metavar=('H', 'W'))
    p.add_argument('--threads', type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    (h, w), (ch, cw) = args.image, args.canvas
    image = torch.randn(1, 3, h, w)
    padded = torch.zeros(1, 3, ch, cw)
    padded[..., :h, :w] = image
    print(f'| policy ({h}x{w} alone vs inside {ch}x{cw}) | stage 0 | stage 1 | stage 2 | stage 3 |')
    print('|---|---|---|---|---|')
    for label, (name, kwargs) in POLICIES.items():
        backbone = trained_like(fpn_backbone(name, out_channels=16, **kwargs))
        gaps = region_gaps(backbone, image, padded)
        print(f'| {label} | ' + ' | '.join(f'{g:.1e}' for g in gaps) + ' |', flush=True)


if __name__ == '__main__':
    main()
