#!/usr/bin/env python
"""A dense task whose answer lies d pixels away: label a Fashion-MNIST item by another item d px from it.

    python studies/reach/distance_cues.py --grid docs/distance_samples.png      # a picture of a few canvases

A canvas is a --size x --size grayscale image (black) holding two real 28x28 Fashion-MNIST photos (Xiao et al.
2017; Debian's ``dataset-fashion-mnist``): a **target** of any class but the two cue classes, and a **cue**, a
trouser or a bag (50/50), whose box is exactly ``d`` px from the target's box along one axis (left, right, up or
down, drawn at random; the boxes' top-left corners differ by d). Label map: 0 everywhere (the cue's pixels
included) except the target's pixels (intensity >= ``INK``), which are 1 if the cue is a trouser, 2 if a bag.
(Labelling the cue's own pixels by its class as well was tried as a help and made learning slower: 43 % target
accuracy after 300 steps at d = 32, against 53 % without, and below chance, as targets took the cue's labels.)

So the label of a target pixel is fixed by pixels at least ``d - 27`` px away (L-infinity: the boxes are 28 px
wide): a model whose output at a pixel depends only on inputs within R px of it cannot beat chance (50 %) on the
target pixels once ``d - 27 > R`` (its output there is the same for both cues). Recognizing the target and the cue
is easy (a black background, distinct classes); the distance is the difficulty.

Training canvases come from the training files, drawn afresh from a stream seeded by the run's seed; the
validation set is a fixed list from the test files. Numpy only.
"""
import argparse
import os
import sys

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(os.path.dirname(_HERE), 'detection'), os.path.dirname(os.path.dirname(_HERE))]
from fashion_boxes import ITEM, load_items  # noqa: E402
from sgconvnext_cli import atomic_open  # noqa: E402

CUE_CLASSES = (1, 8)  # trouser -> label 1 on the target, bag -> label 2
NUM_LABELS = 3
INK = 32  # of 255: a target pixel from this intensity on
VAL_SEED = 20241
DIRECTIONS = ((0, 1), (0, -1), (1, 0), (-1, 0))  # (dy, dx) of the cue from the target

__all__ = ['CUE_CLASSES', 'NUM_LABELS', 'INK', 'Items', 'make_canvas', 'canvases', 'validation_set', 'target_reach']


class Items:
    """Fashion-MNIST photos of one split, sorted into targets (8 classes) and cues (trousers, bags)."""

    def __init__(self, split: str, limit: int = 0):
        images, labels = load_items(split, limit=limit)
        self.targets = images[~np.isin(labels, CUE_CLASSES)]
        self.cues = [images[labels == c] for c in CUE_CLASSES]


def target_reach(distance: int) -> int:
    """The L-infinity gap (px) from any target pixel to any cue pixel: ``distance - (ITEM - 1)``."""
    return distance - (ITEM - 1)


def make_canvas(rng: np.random.Generator, items: Items, distance: int, size: int = 128):
    """(image (size, size) uint8, labels (size, size) uint8 in 0..2) with the cue ``distance`` px from the target."""
    if not ITEM <= distance <= size - ITEM:
        raise ValueError(f'distance must be in {ITEM}..{size - ITEM} for a {size} px canvas (two {ITEM} px items '
                         f'that do not overlap), got {distance}')
    dy, dx = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
    spans = [(max(0, -step * distance), size - ITEM - max(0, step * distance)) for step in (dy, dx)]
    ty, tx = (int(rng.integers(low, high + 1)) for low, high in spans)
    cue_class = int(rng.integers(len(CUE_CLASSES)))
    target = items.targets[int(rng.integers(len(items.targets)))]
    cues = items.cues[cue_class]
    cue = cues[int(rng.integers(len(cues)))]
    image = np.zeros((size, size), np.uint8)
    labels = np.zeros((size, size), np.uint8)
    image[ty:ty + ITEM, tx:tx + ITEM] = target
    labels[ty:ty + ITEM, tx:tx + ITEM] = np.where(target >= INK, cue_class + 1, 0)
    cy, cx = ty + dy * distance, tx + dx * distance
    image[cy:cy + ITEM, cx:cx + ITEM] = cue
    return image, labels


def canvases(seed: int, items: Items, distance: int, size: int = 128):
    """An endless stream of make_canvas pairs from ``np.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    while True:
        yield make_canvas(rng, items, distance, size)


def validation_set(items: Items, distance: int, count: int = 400, size: int = 128, seed: int = VAL_SEED):
    """(images (count, size, size) uint8, labels (count, size, size) uint8): the same on every call and machine."""
    stream = canvases(seed, items, distance, size)
    pairs = [next(stream) for _ in range(count)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def draw_grid(path: str, distances, size: int = 128, per_distance: int = 3) -> None:
    """A PNG: one row per distance of validation canvases, target pixels tinted by their label (red 1, blue 2)."""
    from PIL import Image
    items = Items('val')
    tile = size + 4
    sheet = Image.new('RGB', (per_distance * tile, len(distances) * tile), (255, 255, 255))
    for row, distance in enumerate(distances):
        images, labels = validation_set(items, distance, per_distance, size)
        for col in range(per_distance):
            rgb = np.repeat(images[col][..., None], 3, axis=2)
            rgb[labels[col] == 1, 1:] //= 3
            rgb[labels[col] == 2, :2] //= 3
            sheet.paste(Image.fromarray(rgb), (col * tile + 2, row * tile + 2))
    with atomic_open(path, 'wb') as f:
        sheet.save(f, format='PNG')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--grid', required=True, help='write a PNG of validation canvases, one row per --distances')
    p.add_argument('--distances', nargs='+', type=int, default=[32, 64, 96])
    p.add_argument('--size', type=int, default=128)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    draw_grid(args.grid, args.distances, args.size)
    print(f'{len(args.distances)} rows of canvases in {args.grid}', file=sys.stderr)


if __name__ == '__main__':
    main()
