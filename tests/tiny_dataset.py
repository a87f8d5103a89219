"""A tiny ImageFolder (train/ and val/ class folders of small PNGs) for training-script tests."""
import os
import random

from PIL import Image

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]


def make_image_folder(root, classes: int = 3, train: int = 12, val: int = 3, size: int = 40, seed: int = 0) -> str:
    """``root/{train,val}/class{i}/{j}.png``: one noisy solid colour per class, so a model can learn it."""
    rng = random.Random(seed)
    for split, count in (('train', train), ('val', val)):
        for c in range(classes):
            folder = os.path.join(root, split, f'class{c}')
            os.makedirs(folder, exist_ok=True)
            for j in range(count):
                color = tuple(min(255, max(0, v + rng.randint(-40, 40))) for v in COLORS[c % len(COLORS)])
                Image.new('RGB', (size, size), color).save(os.path.join(folder, f'{j}.png'))
    return str(root)
