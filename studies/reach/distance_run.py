#!/usr/bin/env python
"""One run of the distance task: a segmenter labels each target pixel by the cue ``--distance`` px away.

    python studies/reach/distance_run.py --model sgconvnext_atto --distance 64 --seed 0 --steps 300 \\
        --out output/reach/distance/sgconvnext_atto-d64-seed0

Models: ``convnext_atto`` / ``sgconvnext_atto`` as smp FPN encoders (``tu-`` + name, the dense backbone issue's
segmentation path; sgconvnext built for the canvas, ``img_size=--size``), or ``local_cnn``, the control
(``LocalCNN``: every output pixel sees only the input within ``LocalCNN.REACH`` = 17 px). Random init; AdamW, linear
warm-up then cosine to 0 (detection_run.lr_at). Loss: the mean cross-entropy of the background pixels plus that
of the target pixels, so the few target pixels weigh as much as the rest.

Writes ``OUT/train.csv`` (step, mean loss over the last --log-every steps, lr, seconds), ``OUT/eval.csv`` (step,
target-pixel accuracy, background accuracy) every --eval-every steps and at the end, ``OUT/model.pth`` (the
weights) and ``OUT/summary.json`` last (the run counts as done when it exists). One CPU thread.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.join(os.path.dirname(_HERE), 'detection'), os.path.dirname(os.path.dirname(_HERE))]
import distance_cues  # noqa: E402
from detection_run import CSVLog, lr_at  # noqa: E402
from sgconvnext_cli import atomic_open  # noqa: E402

MODELS = ('convnext_atto', 'sgconvnext_atto', 'local_cnn')
MEAN, STD = 0.286, 0.353  # Fashion-MNIST's pixel statistics (0..1)


class LocalCNN(nn.Module):
    """The control: a 4x4 stride-4 stem, three 3x3 convs at stride 4, a 1x1 classifier, bilinear x4 upsampling.

    An output pixel p reads the two stride-4 cells around (p + 0.5) / 4 - 0.5 (bilinear, align_corners=False), each
    of which reads cells within 3 of it (three 3x3 convs), each of which covers 4 input pixels: inputs q with
    |q - p| <= REACH on each axis (17 for p = 4k + 1 and 4k + 2, 16 otherwise).
    """

    REACH = 17

    def __init__(self, in_chans: int = 1, num_classes: int = distance_cues.NUM_LABELS, width: int = 64):
        super().__init__()
        layers = [nn.Conv2d(in_chans, width, 4, stride=4), nn.GELU()]
        for _ in range(3):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.GELU()]
        self.body = nn.Sequential(*layers, nn.Conv2d(width, num_classes, 1))

    def forward(self, x):  # (B, in_chans, H, W) -> (B, num_classes, H, W)
        return F.interpolate(self.body(x), size=x.shape[-2:], mode='bilinear', align_corners=False)


def build_model(name: str, size: int = 128):
    if name == 'local_cnn':
        return LocalCNN()
    import segmentation_models_pytorch as smp
    import sgconvnext  # noqa: F401  (registers sgconvnext_* with timm)
    kwargs = {'img_size': size} if name.startswith('sgconvnext') else {}
    return smp.FPN('tu-' + name, encoder_weights=None, in_channels=1, classes=distance_cues.NUM_LABELS, **kwargs)


def to_batch(images: np.ndarray, labels: np.ndarray):
    """uint8 (B, H, W) pairs -> (normalized float (B, 1, H, W), int64 labels (B, H, W))."""
    x = (torch.from_numpy(images).float().div_(255).sub_(MEAN).div_(STD)).unsqueeze(1)
    return x, torch.from_numpy(labels).long()


def balanced_loss(logits, labels):
    """Mean cross-entropy of the background pixels plus that of the target pixels."""
    per_pixel = F.cross_entropy(logits, labels, reduction='none')
    target = labels > 0
    return per_pixel[~target].mean() + per_pixel[target].mean()


@torch.no_grad()
def evaluate(model, images, labels, batch_size: int = 50) -> dict:
    """Target-pixel accuracy (the cue read right, 0..100; chance 50) and background accuracy."""
    model.eval()
    hit_t = n_t = hit_b = n_b = 0
    for start in range(0, len(images), batch_size):
        x, y = to_batch(images[start:start + batch_size], labels[start:start + batch_size])
        pred = model(x).argmax(1)
        target = y > 0
        hit_t += int((pred[target] == y[target]).sum())
        n_t += int(target.sum())
        hit_b += int((pred[~target] == 0).sum())
        n_b += int((~target).sum())
    model.train()
    return dict(target_acc=100 * hit_t / n_t, background_acc=100 * hit_b / n_b)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', required=True, choices=MODELS)
    p.add_argument('--distance', type=int, required=True, help='px between the target and the cue (box corners)')
    p.add_argument('--out', required=True)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--size', type=int, default=128)
    p.add_argument('--steps', type=int, default=300)
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--weight-decay', type=float, default=0.05)
    p.add_argument('--warmup', type=int, default=20)
    p.add_argument('--eval-every', type=int, default=100)
    p.add_argument('--val-count', type=int, default=400)
    p.add_argument('--log-every', type=int, default=10)
    args = p.parse_args(argv)
    for flag in ('steps', 'batch_size', 'eval_every', 'log_every', 'val_count'):
        if getattr(args, flag) < 1:
            p.error(f'--{flag.replace("_", "-")} must be >= 1, got {getattr(args, flag)}')
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    model = build_model(args.model, args.size).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    stream = distance_cues.canvases(args.seed, distance_cues.Items('train'), args.distance, args.size)
    val_images, val_labels = distance_cues.validation_set(distance_cues.Items('val'), args.distance,
                                                          args.val_count, args.size)
    train_log = CSVLog(os.path.join(args.out, 'train.csv'), ['step', 'loss', 'lr', 'seconds'])
    eval_log = CSVLog(os.path.join(args.out, 'eval.csv'), ['step', 'target_acc', 'background_acc'])
    losses, seconds, result = [], 0.0, {}
    for step in range(1, args.steps + 1):
        lr = lr_at(step - 1, args.steps, args.lr, args.warmup)
        for group in optimizer.param_groups:
            group['lr'] = lr
        pairs = [next(stream) for _ in range(args.batch_size)]
        x, y = to_batch(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))
        start = time.perf_counter()
        loss = balanced_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seconds += time.perf_counter() - start
        losses.append(loss.item())
        if step % args.log_every == 0 or step == args.steps:
            train_log.write(dict(step=step, loss=sum(losses) / len(losses), lr=lr, seconds=round(seconds, 1)))
            losses = []
        if step % args.eval_every == 0 or step == args.steps:
            result = evaluate(model, val_images, val_labels)
            eval_log.write(dict(step=step, **{k: round(v, 2) for k, v in result.items()}))
    with atomic_open(os.path.join(args.out, 'model.pth'), 'wb') as f:
        torch.save(model.state_dict(), f)
    summary = dict(vars(args), **result, train_seconds=round(seconds, 1), torch=torch.__version__)
    with atomic_open(os.path.join(args.out, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary), flush=True)


if __name__ == '__main__':
    main()
