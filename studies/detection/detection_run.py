#!/usr/bin/env python
"""One detection training run: torchvision's Faster R-CNN on ``fpn_backbone(--model)``, scored with COCO mAP.

    python studies/detection/detection_run.py --model sgconvnext_atto --seed 0 --steps 200 --eval-every 50 \\
        --out output/detection/sgconvnext_atto-seed0

Data: ``fashion_boxes.py``'s scenes (Fashion-MNIST items at 1x-4x on textured --min-side..--max-side canvases),
training scenes drawn afresh from a stream seeded by --seed, scored on the fixed --val-count validation scenes.
Images keep their pixel size (``NativeSizeTransform``: torchvision only normalizes and pads to a multiple of 32;
the scales are in the data). The backbone is ``fpn_backbone``'s default size policy, with ``canvas`` the largest
padded canvas (sgconvnext only; convnext ignores it). Random init; AdamW, linear warm-up then cosine to 0.

Writes ``OUT/train.csv`` (step, mean loss and its parts over the last --log-every steps, lr, seconds of training),
``OUT/eval.csv`` (step, COCO AP, AP50, AP75, AP small / medium / large, seconds of evaluation) every --eval-every
steps and at the end, and ``OUT/summary.json`` last (the run counts as done when it exists). One CPU thread.
"""
import argparse
import contextlib
import csv
import io
import json
import math
import os
import platform
import subprocess
import sys
import time

import numpy as np
import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(os.path.dirname(_HERE))]
import fashion_boxes  # noqa: E402
import sgconvnext  # noqa: E402,F401  (registers the sgconvnext_* models)
from sgconvnext.dense import fpn_backbone  # noqa: E402

ANCHORS = ((16,), (32,), (64,), (128,), (256,))  # one size per FPN level '0'..'3', 'pool': boxes of 12-112 px
COCO_STATS = ('AP', 'AP50', 'AP75', 'AP_small', 'AP_medium', 'AP_large')
LOSSES = ('loss_classifier', 'loss_box_reg', 'loss_objectness', 'loss_rpn_box_reg')


def native_size_transform(**kwargs):
    """torchvision's GeneralizedRCNNTransform without the resize: normalize and pad only (boxes unchanged)."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    class NativeSizeTransform(GeneralizedRCNNTransform):
        def resize(self, image, target=None):
            return image, target

    return NativeSizeTransform(**kwargs)


def build_model(name: str, canvas: int, out_channels: int = 64, representation: int = 256, rois: int = 128,
                proposals: int = 1000, num_classes: int = 11):
    """Faster R-CNN on ``fpn_backbone(name)``, sized for one CPU thread; images at their own size (padded to /32).

    Small anchors (16-256 px), a box head of two ``representation``-wide layers, ``rois`` sampled RoIs per image,
    ``proposals`` RPN proposals per image in training (0.3x that in evaluation).
    """
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    backbone = fpn_backbone(name, out_channels=out_channels, canvas=canvas)
    anchors = AnchorGenerator(ANCHORS, ((0.5, 1.0, 2.0),) * len(ANCHORS))
    test = max(1, int(0.3 * proposals))
    model = FasterRCNN(backbone, rpn_anchor_generator=anchors, min_size=canvas, max_size=canvas,
                       box_head=TwoMLPHead(out_channels * 7 * 7, representation),
                       box_predictor=FastRCNNPredictor(representation, num_classes), box_batch_size_per_image=rois,
                       rpn_pre_nms_top_n_train=proposals, rpn_post_nms_top_n_train=proposals,
                       rpn_pre_nms_top_n_test=test, rpn_post_nms_top_n_test=test)
    model.transform = native_size_transform(min_size=canvas, max_size=canvas, image_mean=[0.485, 0.456, 0.406],
                                            image_std=[0.229, 0.224, 0.225])
    return model


def to_torch(scene):
    """A scene (uint8 (H, W, 3), boxes (K, 4), labels (K,)) -> (image (3, H, W) float in 0..1, target dict)."""
    image, boxes, labels = scene
    tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255)
    return tensor, dict(boxes=torch.from_numpy(boxes), labels=torch.from_numpy(labels))


def lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from ``lr`` to 0 at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


@torch.no_grad()
def evaluate(model, samples: list, batch_size: int = 4) -> dict:
    """COCO bbox metrics (pycocotools COCOeval, 0..100) of ``model`` on ``samples`` (fashion_boxes scenes)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    model.eval()
    results = []
    for start in range(0, len(samples), batch_size):
        images = [to_torch(s)[0] for s in samples[start:start + batch_size]]
        for image_id, out in enumerate(model(images), start + 1):
            for (x0, y0, x1, y1), label, score in zip(out['boxes'].tolist(), out['labels'].tolist(),
                                                      out['scores'].tolist()):
                results.append(dict(image_id=image_id, category_id=label, bbox=[x0, y0, x1 - x0, y1 - y0],
                                    score=score))
    model.train()
    if not results:
        return dict.fromkeys(COCO_STATS, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and table
        truth = COCO()
        truth.dataset = fashion_boxes.coco_ground_truth(samples)
        truth.createIndex()
        coco_eval = COCOeval(truth, truth.loadRes(results), 'bbox')
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return {k: max(0.0, 100 * float(v)) for k, v in zip(COCO_STATS, coco_eval.stats)}  # -1 (no such boxes) -> 0


class CSVLog:
    """Rows appended to ``path`` (header first), flushed at once so a running study can be watched."""

    def __init__(self, path: str, fields: list):
        self.file = open(path, 'w', newline='')
        self.writer = csv.DictWriter(self.file, fields)
        self.writer.writeheader()

    def write(self, row: dict) -> None:
        self.writer.writerow({k: (f'{v:.6g}' if isinstance(v, float) else v) for k, v in row.items()})
        self.file.flush()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', required=True, help='sgconvnext_* or convnext_* name')
    p.add_argument('--out', required=True, help='folder for train.csv, eval.csv, summary.json')
    p.add_argument('--seed', type=int, default=0, help='weights and training scenes (the validation set is fixed)')
    p.add_argument('--steps', type=int, default=200)
    p.add_argument('--batch-size', type=int, default=4)
    p.add_argument('--lr', type=float, default=4e-4)
    p.add_argument('--weight-decay', type=float, default=0.05)
    p.add_argument('--warmup', type=int, default=50, help='warm-up steps (default: 50)')
    p.add_argument('--eval-every', type=int, default=50, help='steps between evaluations (and at the end)')
    p.add_argument('--log-every', type=int, default=10)
    p.add_argument('--val-count', type=int, default=200, help='validation scenes (default: 200)')
    p.add_argument('--min-side', type=int, default=256)
    p.add_argument('--max-side', type=int, default=512)
    p.add_argument('--out-channels', type=int, default=64, help='FPN channels (default: 64)')
    p.add_argument('--representation', type=int, default=256, help='box head width (default: 256)')
    p.add_argument('--rois', type=int, default=128, help='RoIs sampled per image for the box head (default: 128)')
    p.add_argument('--proposals', type=int, default=1000, help='RPN proposals per image in training (default: 1000)')
    p.add_argument('--source', default=fashion_boxes.SOURCE, help='folder of the Fashion-MNIST .gz IDX files')
    p.add_argument('--threads', type=int, default=1, help='torch threads (default: 1)')
    args = p.parse_args(argv)
    for flag in ('steps', 'batch_size', 'eval_every', 'log_every', 'val_count', 'threads', 'out_channels',
                 'representation', 'rois', 'proposals'):
        if getattr(args, flag) < 1:
            p.error(f'--{flag.replace("_", "-")} must be >= 1, got {getattr(args, flag)}')
    if not 32 <= args.min_side <= args.max_side:
        p.error(f'need 32 <= --min-side <= --max-side, got {args.min_side}, {args.max_side}')
    args.canvas = 32 * math.ceil(args.max_side / 32)  # torchvision pads each batch to a multiple of 32
    return args


def train(args, model, stream, val, train_log, eval_log) -> dict:
    """The training loop with its evaluations; returns the timings and the last metrics."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    train_s = eval_s = 0.0
    window, metrics = [], {}
    model.train()
    for step in range(args.steps):
        start = time.perf_counter()
        images, targets = zip(*(to_torch(next(stream)) for _ in range(args.batch_size)))
        for group in optimizer.param_groups:
            group['lr'] = lr_at(step, args.steps, args.lr, args.warmup)
        losses = model(list(images), list(targets))
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise SystemExit(f'detection_run.py: error: loss is {loss.item()} at step {step + 1} ({losses})')
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        train_s += time.perf_counter() - start
        window.append([loss.item()] + [losses[k].item() for k in LOSSES])
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            mean = np.mean(window, 0).tolist()
            train_log.write(dict(step=step + 1, loss=mean[0], **dict(zip(LOSSES, mean[1:])),
                                 lr=optimizer.param_groups[0]['lr'], train_s=train_s))
            print(f'step {step + 1}/{args.steps} loss {mean[0]:.4f} ({train_s / (step + 1):.2f} s/step)',
                  file=sys.stderr, flush=True)
            window = []
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            start = time.perf_counter()
            metrics = evaluate(model, val, args.batch_size)
            eval_s += time.perf_counter() - start
            eval_log.write(dict(step=step + 1, **metrics, eval_s=eval_s))
            print(f'step {step + 1}: AP {metrics["AP"]:.2f} AP50 {metrics["AP50"]:.2f}', file=sys.stderr, flush=True)
    return dict(train_s=train_s, eval_s=eval_s, steps_per_s=args.steps / train_s, **metrics)


def revision() -> str:
    """The checkout's short commit, '+dirty' when sgconvnext/ has uncommitted changes ('unknown' outside git)."""
    try:
        head = subprocess.check_output(['git', 'rev-parse', '--short', 'HEAD'], cwd=_HERE, text=True,
                                       stderr=subprocess.DEVNULL).strip()
        dirty = subprocess.check_output(['git', 'status', '--porcelain', '--', '../../sgconvnext'], cwd=_HERE,
                                        text=True, stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'
    return head + ('+dirty' if dirty else '')


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    wall = time.time()
    torch.manual_seed(args.seed)
    model = build_model(args.model, args.canvas, args.out_channels, args.representation, args.rois, args.proposals)
    sizes = dict(min_side=args.min_side, max_side=args.max_side)
    stream = fashion_boxes.scenes(args.seed, *fashion_boxes.load_items('train', args.source), **sizes)
    val = fashion_boxes.validation_set(*fashion_boxes.load_items('val', args.source), count=args.val_count, **sizes)
    train_log = CSVLog(os.path.join(args.out, 'train.csv'), ['step', 'loss', *LOSSES, 'lr', 'train_s'])
    eval_log = CSVLog(os.path.join(args.out, 'eval.csv'), ['step', *COCO_STATS, 'eval_s'])
    try:
        result = train(args, model, stream, val, train_log, eval_log)
    finally:
        train_log.file.close()
        eval_log.file.close()
    summary = dict(model=args.model, seed=args.seed, steps=args.steps, batch_size=args.batch_size, canvas=args.canvas,
                   params_m=sum(p.numel() for p in model.parameters()) / 1e6, wall_s=time.time() - wall, **result,
                   args=vars(args), revision=revision(), torch=torch.__version__, threads=torch.get_num_threads(),
                   machine=f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores')
    with open(os.path.join(args.out, 'summary.json.tmp'), 'w') as f:
        json.dump(summary, f, indent=2)
    os.replace(os.path.join(args.out, 'summary.json.tmp'), os.path.join(args.out, 'summary.json'))
    print(json.dumps({k: v for k, v in summary.items() if k != 'args'}), flush=True)
    return summary


if __name__ == '__main__':
    main()
