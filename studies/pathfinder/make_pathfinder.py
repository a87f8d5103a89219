#!/usr/bin/env python
"""Write a Pathfinder data set (Linsley et al. 2018, as in the Long Range Arena) as an ImageFolder of PNGs.

    python studies/pathfinder/make_pathfinder.py --out data/pf64 --img-size 64 --train 20000 --val 2000 --seed 0 \\
        --difficulty hard
    python studies/pathfinder/make_pathfinder.py --grid docs/pathfinder_samples.png --img-size 64   # sample picture

Output: ``OUT/train/{0_disconnected,1_connected}/NNNNNN.png`` and the same under ``OUT/val/``; ``OUT/pathfinder.json``
holds the arguments and every resolved parameter. Images are 8-bit grayscale (mode L): white (255) strokes on
black (0), nothing else. Class 1 (``1_connected``): the two markers are the two ends of one curve. Class 0
(``0_disconnected``): they are ends of two different curves. Each split has floor(n/2) or ceil(n/2) images of
each class (even indices are class 0, odd ones class 1). The data set is written into a temporary folder next
to OUT and renamed onto it when complete, so OUT holds a whole data set or nothing (on Ctrl-C or SIGTERM the
temporary folder is removed); an existing non-empty OUT is refused.

The generative process and the presets are described in studies/pathfinder/pathfinder.py (shown by --help too).
"""
import argparse
import json
import math
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
from dataclasses import asdict

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_STUDIES = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [_STUDIES, os.path.dirname(_STUDIES)]  # study_runner; the checkout (sgconvnext_cli: no torch)
from sgconvnext_cli import CLIError, OneLineErrorParser, atomic_open, run_cli  # noqa: E402
import pathfinder  # noqa: E402
from pathfinder import CLASSES, MAX_SIZE, MIN_SIZE, PRESETS, Params, make_image, resolve_params  # noqa: E402


# ----------------------------------------------------------------------------------------------- output

def save_png(img: np.ndarray, path: str) -> None:
    """8-bit grayscale PNG with fixed options (no timestamp or other metadata): same pixels, same bytes."""
    Image.fromarray(img).save(path, format='PNG', compress_level=6, optimize=False)


_job = {}  # the worker's (params, seed, root), set by _init_worker


def _init_worker(p: Params, seed: int, root: str) -> None:
    _job.update(p=p, seed=seed, root=root)


def _init_pool_worker(p: Params, seed: int, root: str) -> None:
    # the parent's handler is inherited; the pool's terminate() must stop a worker as it is
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _init_worker(p, seed, root)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through write_dataset, which removes its temporary folder


def _write_one(task) -> None:
    split, index, name = task
    img = make_image(_job['p'], _job['seed'], split, index)
    save_png(img, os.path.join(_job['root'], split, CLASSES[index % 2], name))


def tasks(counts: dict):
    """(split, index, file name) of every image; names are zero-padded indices, the class is index % 2."""
    for split, n in counts.items():
        digits = max(6, len(str(n - 1)))
        for index in range(n):
            yield split, index, f'{index:0{digits}d}.png'


def describe(p: Params, args) -> dict:
    """The content of pathfinder.json: the arguments that decide the images and every resolved parameter."""
    return {
        'generator': 'studies/pathfinder/make_pathfinder.py',
        'img_size': p.img_size, 'seed': args.seed, 'difficulty': args.difficulty,
        'splits': {split: {CLASSES[0]: (n + 1) // 2, CLASSES[1]: n // 2}
                   for split, n in (('train', args.train), ('val', args.val))},
        'params': {**asdict(p), 'length': p.length, 'steps': p.steps},
        # what a checker needs: the pixels on the two sides of a gap are at most max_gap_distance apart,
        # pixels of different curves at least clearance apart (centre to centre)
        'max_gap_distance': p.dash_gap + math.sqrt(2),
        'image_mode': 'L', 'classes': list(CLASSES),
    }


def write_dataset(out: str, p: Params, args) -> None:
    """All images of train and val, into a temporary folder next to ``out`` that is renamed onto it at the end."""
    from tqdm import tqdm

    if os.path.isfile(out) or (os.path.isdir(out) and os.listdir(out)):
        raise CLIError(f'--out {out} already exists and is not an empty folder; remove it or pick another path')
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f'.{os.path.basename(os.path.abspath(out))}.', suffix='.tmp')
    handles_signals = threading.current_thread() is threading.main_thread()  # Python's rule for signal handlers
    previous_handler = signal.signal(signal.SIGTERM, _exit_on_sigterm) if handles_signals else None
    try:
        counts = {'train': args.train, 'val': args.val}
        for split in counts:
            for name in CLASSES:
                os.makedirs(os.path.join(tmp, split, name))
        todo = list(tasks(counts))
        with tqdm(total=len(todo), desc=f'pathfinder {p.img_size}px {args.difficulty}', unit='img',
                  file=sys.stderr, mininterval=0.5, disable=args.quiet) as bar:
            if args.workers <= 1:
                _init_worker(p, args.seed, tmp)
                for task in todo:
                    _write_one(task)
                    bar.update()
            else:
                with multiprocessing.Pool(args.workers, _init_pool_worker, (p, args.seed, tmp)) as pool:
                    for _ in pool.imap_unordered(_write_one, todo, chunksize=16):
                        bar.update()
        with atomic_open(os.path.join(tmp, 'pathfinder.json')) as f:
            json.dump(describe(p, args), f, indent=2)
            f.write('\n')
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        os.replace(tmp, out) if os.path.isdir(out) else os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if handles_signals:  # None: the handler was not set from Python
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous_handler is None else previous_handler)


def grid_picture(img_size: int, seed: int, columns: int, overrides: dict, difficulty: str = 'medium') -> Image.Image:
    """Samples of every preset (rows: easy connected, easy disconnected, medium ...), ``columns`` per row; with
    knob ``overrides``, of ``difficulty`` with them only (the presets would differ in their labels alone)."""
    zoom = max(1, 128 // img_size)
    cell, gap, label_width, font = img_size * zoom, 4, 150, ImageFont.load_default()
    knobs = any(v is not None for v in overrides.values())
    rows = [(d, label) for d in ((difficulty,) if knobs else PRESETS) for label in (1, 0)]
    image = Image.new('L', (label_width + columns * (cell + gap), len(rows) * (cell + gap) + gap), 128)
    draw = ImageDraw.Draw(image)
    for r, (difficulty, label) in enumerate(rows):
        p = resolve_params(img_size, difficulty, **overrides)
        top = gap + r * (cell + gap)
        draw.text((6, top + cell // 2 - 16), difficulty, fill=255, font=font)
        draw.text((6, top + cell // 2 - 2), CLASSES[label], fill=255, font=font)
        draw.text((6, top + cell // 2 + 12), f'{p.dashes} dashes, {p.distractors} distr.', fill=255, font=font)
        for c in range(columns):
            img = make_image(p, seed, 'grid', 2 * c + label)
            tile = Image.fromarray(img).resize((cell, cell), Image.Resampling.NEAREST)
            image.paste(tile, (label_width + c * (cell + gap), top))
    return image


# ----------------------------------------------------------------------------------------------- command line

def _whole_number(low: int, high: float, kind: str, limits: str):
    """An argparse type: a whole number in [low, high]; ``kind`` and ``limits`` complete its two error messages."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'must be a whole number{kind}, got {text!r}') from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f'must be {limits}, got {value}')
        return value
    return parse


_count = _whole_number(0, math.inf, ' >= 0', 'a whole number >= 0')
_size = _whole_number(MIN_SIZE, MAX_SIZE, ' of pixels', f'between {MIN_SIZE} and {MAX_SIZE} px')


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'must be a number, got {text!r}') from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f'must be a finite number, got {text!r}')
    return value


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(description=__doc__ + '\n' + pathfinder.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add('--out', metavar='DIR', help='write the data set here (DIR/train, DIR/val, DIR/pathfinder.json)')
    add('--img-size', type=_size, default=64, metavar='N', help=f'image side, {MIN_SIZE}-{MAX_SIZE} px (default: 64)')
    add('--train', type=_count, default=10000, metavar='N', help='training images (default: 10000)')
    add('--val', type=_count, default=2000, metavar='N', help='validation images (default: 2000)')
    add('--seed', type=_count, default=0, metavar='S', help='random seed (default: 0)')
    add('--difficulty', default='medium', choices=list(PRESETS), help='preset (default: medium)')
    add('--dashes', type=_count, default=None, metavar='N', help='path length: dashes per curve (preset)')
    add('--dash-length', type=_number, default=None, metavar='PX', help='dash length in px (preset, >= 1)')
    add('--dash-gap', type=_number, default=None, metavar='PX', help='gap between dashes in px (preset, >= 1)')
    add('--distractors', type=_count, default=None, metavar='N', help='curves besides the two main ones (preset)')
    add('--max-turn', type=_number, default=None, metavar='RAD',
        help='largest turn per step of img_size/64 px, radians (preset, at most 1)')
    add('--workers', type=_count, default=os.cpu_count() or 1, metavar='N',
        help='processes (default: all cores; the output does not depend on it)')
    add('--grid', metavar='PNG', help='also (or only, without --out) write a picture of samples of every preset '
                                      '(with knob flags: of --difficulty with them)')
    add('--grid-columns', type=_count, default=6, metavar='N', help='samples per row of --grid (default: 6)')
    add('--quiet', action='store_true', help='no progress bar')
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not args.out and not args.grid:
        raise CLIError('nothing to do: pass --out DIR (a data set) and/or --grid PNG (a picture of samples)')
    if args.out and args.train + args.val == 0:
        raise CLIError('--train and --val are both 0: nothing to write')
    if args.grid and not args.grid.lower().endswith('.png'):
        raise CLIError(f'--grid must be a .png path, got {args.grid!r}')
    overrides = dict(dashes=args.dashes, dash_length=args.dash_length, dash_gap=args.dash_gap,
                     distractors=args.distractors, max_turn=args.max_turn)
    if args.dashes == 0:
        raise CLIError('--dashes must be >= 1, got 0')
    p = resolve_params(args.img_size, args.difficulty, **overrides)
    if args.out:
        make_image(p, args.seed, 'train', 0)  # fails here, before anything is written, if the curves cannot fit
        write_dataset(args.out, p, args)
        print(f'wrote {args.train} + {args.val} images of {p.img_size} px ({args.difficulty}: {p.dashes} dashes of '
              f'{p.dash_length:.2f} px, gaps {p.dash_gap:.2f} px, {p.distractors} distractors) to {args.out}',
              file=sys.stderr)
    if args.grid:
        picture = grid_picture(args.img_size, args.seed, max(1, args.grid_columns), overrides, args.difficulty)
        with atomic_open(args.grid, 'wb') as f:
            picture.save(f, format='PNG', compress_level=9)
        print(f'wrote {args.grid} ({picture.width}x{picture.height})', file=sys.stderr)


if __name__ == '__main__':
    run_cli(main)
