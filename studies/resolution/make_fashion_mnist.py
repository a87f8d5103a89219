#!/usr/bin/env python
"""Write (a class-balanced subset of) Fashion-MNIST as an ImageFolder for train_imagenet.py, from local files.

    apt-get install dataset-fashion-mnist        # Debian's package: /usr/share/datasets/fashion-mnist/*.gz
    python studies/resolution/make_fashion_mnist.py --out data/fmnist --train 1000 --val 500

Fashion-MNIST (Xiao et al. 2017): 28x28 grayscale photos of 10 kinds of clothing, 60,000 training and 10,000
test images. ``--train N`` takes the first N images of each class from the training files, ``--val N`` the first
N of each class from the test files, so the subset is the same on every machine. Writes ``OUT/train/<class>/`` and
``OUT/val/<class>/`` of 28x28 grayscale PNGs (the training script's loader converts them to RGB and resizes);
class folders are ``0_tshirt_top`` .. ``9_ankle_boot`` so their sorted order is the label order.
"""
import argparse
import gzip
import os
import struct
import sys

import numpy as np
from PIL import Image

_STUDIES = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [_STUDIES, os.path.dirname(_STUDIES)]  # study_runner; the checkout (sgconvnext_cli: no torch)
from sgconvnext_cli import atomic_open  # noqa: E402

SOURCE = '/usr/share/datasets/fashion-mnist'
CLASSES = ('tshirt_top', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag', 'ankle_boot')
FILES = {'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
         'val': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')}


def read_idx(path: str) -> np.ndarray:
    """An IDX file (the MNIST format: magic, dims, big-endian uint8 data) as an array."""
    with gzip.open(path, 'rb') as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack('>HBB', data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f'{path} is not an IDX file of uint8 (magic {data[:4].hex()})')
    shape = struct.unpack(f'>{ndim}I', data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', required=True, help='output folder (gets train/ and val/)')
    p.add_argument('--train', type=int, default=1000, help='training images per class (max 6000; default 1000)')
    p.add_argument('--val', type=int, default=500, help='validation images per class (max 1000; default 500)')
    p.add_argument('--source', default=SOURCE, help=f'folder of the .gz IDX files (default: {SOURCE})')
    args = p.parse_args(argv)
    for flag, value, most in (('--train', args.train, 6000), ('--val', args.val, 1000)):
        if not 1 <= value <= most:
            p.error(f'{flag} must be between 1 and {most} images per class, got {value}')
    missing = [name for pair in FILES.values() for name in pair if not os.path.isfile(os.path.join(args.source, name))]
    if missing:
        p.error(f'{args.source} lacks {", ".join(missing)}: install Debian\'s dataset-fashion-mnist or pass --source')
    return args


def main(argv=None):
    args = parse_args(argv)
    for split, per_class in (('train', args.train), ('val', args.val)):
        images, labels = (read_idx(os.path.join(args.source, name)) for name in FILES[split])
        for label, name in enumerate(CLASSES):
            folder = os.path.join(args.out, split, f'{label}_{name}')
            os.makedirs(folder, exist_ok=True)
            for i, index in enumerate(np.flatnonzero(labels == label)[:per_class]):
                with atomic_open(os.path.join(folder, f'{index:05d}.png'), 'wb') as f:
                    Image.fromarray(images[index], mode='L').save(f, format='PNG')
        print(f'{split}: {per_class * len(CLASSES)} images in {os.path.join(args.out, split)}', file=sys.stderr)


if __name__ == '__main__':
    main()
