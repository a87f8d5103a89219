#!/usr/bin/env python
"""Detection scenes made of real images: Fashion-MNIST items pasted on textured canvases, every box known.

    python studies/detection/fashion_boxes.py --grid docs/detection_samples.png     # a picture of 6 scenes

A scene is an 8-bit RGB canvas of random height and width (each side drawn from --min-side..--max-side, so batches
of them are not square and torchvision pads them), with a smooth random background (a coarse random field
upsampled bilinearly, a random base colour, per-pixel noise) and 1-5 Fashion-MNIST items (Xiao et al. 2017; the
28x28 photos that ``studies/resolution/make_fashion_mnist.py`` reads from Debian's ``dataset-fashion-mnist``)
each resized by a random factor of 1x-4x (28-112 px) and alpha-blended in a random bright colour, the item's
own intensity as alpha. Items do not overlap (their boxes keep a 2 px gap; a scene takes fewer items when no
place is free). A box is the tight box of the item's pixels with alpha >= ``ALPHA_MIN`` (x0, y0, x1, y1 in pixels,
x1 / y1 exclusive), its label the Fashion-MNIST class + 1 (0 is torchvision's background).

Training scenes come from the training files, drawn afresh from a seeded stream; the validation set is a fixed
list of scenes from the test files (``validation_set``: the same scenes for every run and machine). Numpy and
PIL only: no torch here.
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(os.path.dirname(_HERE), 'resolution'), os.path.dirname(os.path.dirname(_HERE))]
from make_fashion_mnist import CLASSES, FILES, SOURCE, read_idx  # noqa: E402
from sgconvnext_cli import atomic_open  # noqa: E402

ITEM = 28  # Fashion-MNIST's side
ALPHA_MIN = 32  # of 255: an item's pixel counts for its box from this alpha on
GAP = 2  # px between two items' boxes
VAL_SEED = 20231  # the validation scenes' seed (fixed: every run is scored on the same scenes)

__all__ = ['CLASSES', 'load_items', 'make_scene', 'scenes', 'validation_set', 'coco_ground_truth']


def load_items(split: str, source: str = SOURCE, limit: int = 0):
    """(images (N, 28, 28) uint8, labels (N,) int64 in 0..9) of Fashion-MNIST's ``split`` ('train' or 'val').

    ``limit`` > 0 keeps the first ``limit`` images.
    """
    images, labels = (read_idx(os.path.join(source, name)) for name in FILES[split])
    if limit:
        images, labels = images[:limit], labels[:limit]
    return images, labels.astype(np.int64)


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth textured background (height, width, 3) float32 in 0..255: coarse field + base colour + noise."""
    cells = rng.integers(3, 9)
    base = rng.uniform(30, 130, size=3)
    field = np.empty((height, width, 3), np.float32)
    for c in range(3):
        coarse = rng.uniform(-45, 45, size=(cells, cells)).astype(np.float32)
        field[..., c] = np.asarray(Image.fromarray(coarse, mode='F').resize((width, height), Image.BILINEAR))
    return field + base + rng.normal(0, 8, size=(height, width, 3)).astype(np.float32)


def _place(rng, height, width, h, w, boxes):
    """Top-left (y, x) of an h x w item at least GAP px from every box in ``boxes``, or None after 50 tries."""
    for _ in range(50):
        y, x = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        if all(x >= b[2] + GAP or x + w + GAP <= b[0] or y >= b[3] + GAP or y + h + GAP <= b[1] for b in boxes):
            return y, x
    return None


def make_scene(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, min_side: int = 256,
               max_side: int = 512, max_items: int = 5, scales=(1.0, 4.0)):
    """One scene: (image (H, W, 3) uint8, boxes (K, 4) float32 x0 y0 x1 y1, labels (K,) int64 in 1..10), K >= 1.

    H and W are drawn independently from min_side..max_side; each item from ``images`` (N, 28, 28) at a size of
    ``scales`` x 28 px (log-uniform).
    """
    height, width = (int(rng.integers(min_side, max_side + 1)) for _ in range(2))
    canvas = background(rng, height, width)
    boxes, classes = [], []
    for _ in range(int(rng.integers(1, max_items + 1))):
        index = int(rng.integers(len(images)))
        side = int(round(ITEM * np.exp(rng.uniform(np.log(scales[0]), np.log(scales[1])))))
        side = min(side, height, width)
        alpha = np.asarray(Image.fromarray(images[index]).resize((side, side), Image.BILINEAR))
        rows, cols = np.flatnonzero((alpha >= ALPHA_MIN).any(1)), np.flatnonzero((alpha >= ALPHA_MIN).any(0))
        if not len(rows):
            continue
        alpha = alpha[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]  # cropped to its box
        h, w = alpha.shape
        spot = _place(rng, height, width, h, w, boxes)
        if spot is None:
            continue
        y, x = spot
        colour = rng.uniform(150, 255, size=3).astype(np.float32)
        a = (alpha.astype(np.float32) / 255)[..., None]
        canvas[y:y + h, x:x + w] = canvas[y:y + h, x:x + w] * (1 - a) + colour * a
        boxes.append((x, y, x + w, y + h))
        classes.append(int(labels[index]) + 1)
    if not boxes:  # every item failed (not seen at these sizes); try again rather than return an empty scene
        return make_scene(rng, images, labels, min_side, max_side, max_items, scales)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return image, np.asarray(boxes, np.float32), np.asarray(classes, np.int64)


def scenes(seed: int, images: np.ndarray, labels: np.ndarray, **scene_kwargs):
    """An endless stream of scenes (make_scene's triples) from ``np.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    while True:
        yield make_scene(rng, images, labels, **scene_kwargs)


def validation_set(images: np.ndarray, labels: np.ndarray, count: int = 200, seed: int = VAL_SEED,
                   **scene_kwargs) -> list:
    """``count`` scenes from a fixed seed: the same list on every call, run and machine."""
    stream = scenes(seed, images, labels, **scene_kwargs)
    return [next(stream) for _ in range(count)]


def coco_ground_truth(samples: list) -> dict:
    """A COCO ground-truth dict (images, annotations with xywh boxes, categories) of ``samples``; ids from 1."""
    coco = dict(images=[], annotations=[], categories=[dict(id=i + 1, name=n) for i, n in enumerate(CLASSES)])
    for image_id, (image, boxes, classes) in enumerate(samples, 1):
        coco['images'].append(dict(id=image_id, height=image.shape[0], width=image.shape[1]))
        for (x0, y0, x1, y1), label in zip(boxes.tolist(), classes.tolist()):
            coco['annotations'].append(dict(id=len(coco['annotations']) + 1, image_id=image_id, category_id=label,
                                            bbox=[x0, y0, x1 - x0, y1 - y0], area=(x1 - x0) * (y1 - y0),
                                            iscrowd=0))
    return coco


def draw_grid(path: str, samples: list, columns: int = 3, width: int = 0) -> None:
    """A picture of ``samples`` with their boxes drawn in, each on a tile of the largest side (PNG).

    ``width`` > 0: the sheet is scaled down to that many pixels wide; it is saved with a 128-colour palette (the
    background noise makes full-colour PNGs large).
    """
    from PIL import ImageDraw
    tile = max(max(image.shape[:2]) for image, _, _ in samples) + 8
    rows = (len(samples) + columns - 1) // columns
    sheet = Image.new('RGB', (columns * tile, rows * tile), (255, 255, 255))
    for k, (image, boxes, classes) in enumerate(samples):
        scene = Image.fromarray(image)
        draw = ImageDraw.Draw(scene)
        for (x0, y0, x1, y1), label in zip(boxes.tolist(), classes.tolist()):
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=(255, 40, 40), width=2)
            draw.text((x0 + 3, y0 + 2), CLASSES[label - 1], fill=(255, 255, 0))
        sheet.paste(scene, ((k % columns) * tile + 4, (k // columns) * tile + 4))
    if 0 < width < sheet.width:
        sheet = sheet.resize((width, round(sheet.height * width / sheet.width)), Image.LANCZOS)
    with atomic_open(path, 'wb') as f:
        sheet.quantize(128).save(f, format='PNG')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--grid', required=True, help='write a PNG of --count validation scenes with their boxes')
    p.add_argument('--count', type=int, default=6)
    p.add_argument('--width', type=int, default=720, help='scale the picture down to this width (0: full size)')
    p.add_argument('--source', default=SOURCE, help=f'folder of the .gz IDX files (default: {SOURCE})')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    images, labels = load_items('val', args.source)
    draw_grid(args.grid, validation_set(images, labels, args.count), width=args.width)
    print(f'{args.count} scenes in {args.grid}', file=sys.stderr)


if __name__ == '__main__':
    main()
