"""Datasets for the training scripts: timm's ``create_dataset``, with one-line errors for bad input.

* A missing or empty data dir, or an image folder without the split asked for, is a CLIError that
  says what to fix (timm would assert, raise from deep inside, or quietly validate on train images).
* A corrupt image file stops the run with a CorruptImageError naming the file. timm's ImageDataset
  instead skips it and returns a neighbouring sample in its place; we stop because a corrupt file
  usually means a broken copy of the dataset, and silently training on a different set of images
  is worse than a clear stop. Delete or replace the file and resume from ``last.pth.tar``.
* ``create_loaders(args, data_config, device)``: the training and evaluation loaders of a run (timm's
  ``create_loader``), with mixup / cutmix in the collate or as a function.
"""
import os
import re

import torch
from PIL import Image
from timm.data import FastCollateMixup, Mixup, create_dataset, create_loader
from timm.data.dataset import ImageDataset

from .config import CLIError

__all__ = ['CorruptImageError', 'StrictImageDataset', 'create_checked_dataset', 'create_loaders', 'find_split_dir']

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


def create_loaders(args, data_config, device):
    """Train and eval loaders (eval is None with --val-split ''), and the Mixup fn when not in the collate."""
    dataset_kwargs = dict(
        class_map=args.class_map, download=args.dataset_download, batch_size=args.batch_size,
        input_img_mode=args.input_img_mode or ('RGB' if data_config['input_size'][0] == 3 else 'L'),
        input_key=args.input_key, target_key=args.target_key, trust_remote_code=args.dataset_trust_remote_code)
    dataset_train = create_checked_dataset(
        args.dataset, args.data_dir, args.train_split, is_training=True, flag='--train-split', seed=args.seed,
        repeats=args.epoch_repeats, num_samples=args.train_num_samples, **dataset_kwargs)
    dataset_eval = None
    if args.val_split:
        dataset_eval = create_checked_dataset(
            args.dataset, args.data_dir, args.val_split, is_training=False, flag='--val-split',
            num_samples=args.val_num_samples, **dataset_kwargs)
    num_dataset_classes = len(getattr(getattr(dataset_train, 'reader', None), 'class_to_idx', None) or {})
    if num_dataset_classes > args.num_classes:
        raise CLIError(f'the training set has {num_dataset_classes} classes but {args.model} has {args.num_classes} '
                       f'outputs; pass --num-classes {num_dataset_classes}')

    mixup_fn, collate_fn = None, None
    if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
        if args.batch_size % 2:
            raise CLIError(f'mixup / cutmix need an even --batch-size, got {args.batch_size}')
        mixup_args = dict(
            mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
            prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
            label_smoothing=args.smoothing, num_classes=args.num_classes)
        if args.prefetcher:
            collate_fn = FastCollateMixup(**mixup_args)
        else:
            mixup_fn = Mixup(**mixup_args)

    common = dict(mean=data_config['mean'], std=data_config['std'], pin_memory=args.pin_mem, device=device,
                  distributed=args.distributed, use_prefetcher=args.prefetcher)
    loader_train = create_loader(
        dataset_train, input_size=data_config['input_size'], batch_size=args.batch_size, is_training=True,
        no_aug=args.no_aug, re_prob=args.reprob, re_mode=args.remode, re_count=args.recount, re_split=args.resplit,
        train_crop_mode=args.train_crop_mode, scale=args.scale, ratio=args.ratio, hflip=args.hflip,
        vflip=args.vflip, color_jitter=args.color_jitter, auto_augment=args.aa, num_aug_repeats=args.aug_repeats,
        interpolation=data_config['interpolation'] if args.no_aug or not args.train_interpolation
        else args.train_interpolation,
        num_workers=args.workers, worker_seeding=args.worker_seeding, collate_fn=collate_fn,
        use_multi_epochs_loader=args.use_multi_epochs_loader, **common)
    if len(loader_train) == 0:
        raise CLIError(f'the training set ({len(dataset_train)} images over {args.world_size} processes) is '
                       f'smaller than one batch of {args.batch_size}; lower --batch-size')
    loader_eval = None
    if dataset_eval is not None:
        loader_eval = create_loader(
            dataset_eval, input_size=data_config['input_size'],
            batch_size=args.validation_batch_size or args.batch_size, is_training=False,
            interpolation=data_config['interpolation'], crop_pct=data_config['crop_pct'],
            num_workers=args.workers, **common)
    return loader_train, loader_eval, mixup_fn
