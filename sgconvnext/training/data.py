"""Datasets for the training scripts: timm's ``create_dataset``, with one-line errors for bad input.

* A missing or empty data dir, or an image folder without the split asked for, is a CLIError that
  says what to fix (timm would assert, raise from deep inside, or quietly validate on train images).
* A corrupt image file stops the run with a CorruptImageError naming the file. timm's ImageDataset
  instead skips it and returns a neighbouring sample in its place; we stop because a corrupt file
  usually means a broken copy of the dataset, and silently training on a different set of images
  is worse than a clear stop. Delete or replace the file and resume from ``last.pth.tar``.
"""
import os
import re

import torch
from PIL import Image
from timm.data import create_dataset
from timm.data.dataset import ImageDataset

from .config import CLIError

__all__ = ['CorruptImageError', 'StrictImageDataset', 'create_checked_dataset', 'find_split_dir']

_REMOTE_PREFIXES = ('torch', 'hfds', 'hfids', 'tfds', 'wds')
_SPLIT_SYNONYMS = {
    'train': ('train', 'training'),
    'val': ('val', 'valid', 'validation', 'eval', 'evaluation'),
}


class CorruptImageError(CLIError):
    """An image file that PIL cannot decode."""


class StrictImageDataset(ImageDataset):
    """timm's ImageDataset that raises CorruptImageError, naming the file, instead of skipping it."""

    @classmethod
    def from_dataset(cls, dataset: ImageDataset) -> 'StrictImageDataset':
        return cls(
            None, reader=dataset.reader, load_bytes=dataset.load_bytes, input_img_mode=dataset.input_img_mode,
            transform=dataset.transform, target_transform=dataset.target_transform)

    def __getitem__(self, index):
        img, target, *features = self.reader[index]
        try:
            if self.load_bytes:
                img = img.read()
            else:
                img = Image.open(img)
                if self.input_img_mode:
                    img = img.convert(self.input_img_mode)  # decodes the pixels: truncated files fail here
        except (OSError, SyntaxError, ValueError) as e:
            reason = re.sub(r"\s*<_io\.\w+ name='[^']*'>", '', str(e))  # PIL repeats the path
            raise CorruptImageError(
                f'corrupt image file {self.filename(index, absolute=True)} ({reason}); delete or replace it '
                f'(or re-copy the dataset), then rerun or resume') from None
        if self.transform is not None:
            img = self.transform(img)
        if target is None:
            target = -1
        elif self.target_transform is not None:
            target = self.target_transform(target)
        return (img, target, *features) if getattr(self, 'additional_features', None) else (img, target)


def _is_local(dataset_name: str) -> bool:
    prefix, sep, _ = dataset_name.partition('/')
    return not (sep and prefix.lower() in _REMOTE_PREFIXES)


def find_split_dir(root: str, split: str):
    """The sub-folder of ``root`` timm uses for ``split`` (``validation`` also finds ``val/``), or None."""
    name = split.split('[')[0]
    candidates = [name]
    for synonyms in _SPLIT_SYNONYMS.values():
        if name in synonyms:
            candidates += list(synonyms)
    for candidate in candidates:
        path = os.path.join(root, candidate)
        if os.path.isdir(path):
            return path
    return None


def _check_local_root(root, split: str, flag: str) -> None:
    if not root:
        raise CLIError('no dataset given: pass --data-dir DIR (an image folder with train/ and val/ class folders)')
    if not os.path.exists(root):
        raise CLIError(f'--data-dir {root} does not exist; point it at a folder with train/ and val/ '
                       f'sub-folders of class folders (or a .tar of one)')
    if os.path.isfile(root):
        return
    if find_split_dir(root, split) is None:
        split_dirs = [d for names in _SPLIT_SYNONYMS.values() for d in names if os.path.isdir(os.path.join(root, d))]
        if split_dirs:  # timm would fall back to the root and use every image in it, train/ included
            skip = " (or --val-split '' to train without validation)" if flag == '--val-split' else ''
            raise CLIError(f"{root} has no folder for split '{split}' (it has {', '.join(split_dirs)}); "
                           f"add it or pass {flag} NAME{skip}")


def create_checked_dataset(name: str, root, split: str, *, is_training: bool, flag: str, **kwargs):
    """timm's ``create_dataset`` with the checks above; image folders load with StrictImageDataset."""
    if _is_local(name):
        _check_local_root(root, split, flag)
    try:
        dataset = create_dataset(name, root=root, split=split, is_training=is_training, **kwargs)
    except RuntimeError as e:  # e.g. "Found 0 images in subfolders of ..."
        layout = f'; expected {root}/train/<class>/<image> and {root}/val/<class>/<image>' if _is_local(name) else ''
        raise CLIError(f"cannot load split '{split}' of {root or name}: {' '.join(str(e).split())}{layout}") from None
    if type(dataset) is ImageDataset:
        dataset = StrictImageDataset.from_dataset(dataset)
    if not isinstance(dataset, torch.utils.data.IterableDataset) and len(dataset) == 0:
        raise CLIError(f"split '{split}' of {root or name} has no images; add class folders with images")
    return dataset
