"""studies/pathfinder/make_pathfinder.py: labels from the pixels, balance, determinism, bad input, training on it.

The checker works only from a written PNG and the numbers pathfinder.json documents (stroke width, the largest
pixel distance across a dash gap, the clearance between curves); it knows nothing of the generator's curves:

1. markers: the pixels whose (width + 2)-square neighbourhood is all white (strokes are too thin for one),
   grouped 8-connected; there must be exactly two groups;
2. curves: white pixels closer than a link radius are joined, with max_gap_distance <= radius < clearance, so
   a gap inside a curve is bridged and the space between two curves is not; connected components by BFS;
3. the label is 1 exactly when both markers are in one component, and there are distractors + 2 components.
"""
import hashlib
import json
import math
import os
import subprocess
import sys
from collections import deque

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, 'studies', 'pathfinder', 'make_pathfinder.py')
sys.path[:0] = [os.path.join(ROOT, 'studies', 'pathfinder'), ROOT]

import make_pathfinder  # noqa: E402
import pathfinder  # noqa: E402
from sgconvnext_cli import run_cli  # noqa: E402
from cli_helpers import one_line_error  # noqa: E402
import processes  # noqa: E402

CLASSES = ('0_disconnected', '1_connected')


# ----------------------------------------------------------------------------------------------- the checker

def link_radius2(meta: dict) -> int:
    """Squared link radius halfway between the largest gap and the clearance (both documented)."""
    gap, clearance = meta['max_gap_distance'], meta['params']['clearance']
    assert gap < clearance, meta
    radius2 = math.floor(((gap + clearance) / 2) ** 2)
    assert gap ** 2 <= radius2 < clearance ** 2
    return radius2


def find_markers(white: np.ndarray, width: int):
    """Groups (lists of (y, x)) of pixels whose (width + 2)-square below-right is all white."""
    b = width + 2
    table = np.zeros((white.shape[0] + 1, white.shape[1] + 1), np.int64)
    table[1:, 1:] = white.cumsum(0).cumsum(1)
    sums = table[b:, b:] - table[:-b, b:] - table[b:, :-b] + table[:-b, :-b]
    core = set(zip(*np.nonzero(sums == b * b)))
    groups = []
    while core:
        todo, group = [core.pop()], []
        while todo:
            y, x = todo.pop()
            group.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    if (y + dy, x + dx) in core:
                        core.remove((y + dy, x + dx))
                        todo.append((y + dy, x + dx))
        groups.append(group)
    return groups


def components(white: np.ndarray, radius2: int) -> dict:
    """{(y, x): component id} over white pixels, joining pixels at squared distance <= radius2."""
    r = math.isqrt(radius2)
    offsets = [(dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1) if 0 < dy * dy + dx * dx <= radius2]
    pixels = set(zip(*np.nonzero(white)))
    label, next_id = {}, 0
    for start in pixels:
        if start in label:
            continue
        label[start] = next_id
        queue = deque([start])
        while queue:
            y, x = queue.popleft()
            for dy, dx in offsets:
                q = (y + dy, x + dx)
                if q in pixels and q not in label:
                    label[q] = next_id
                    queue.append(q)
        next_id += 1
    return label


def check_image(path: str, meta: dict):
    """(connected, number of components, distance between the marker centres) read from the PNG."""
    img = np.asarray(Image.open(path))
    assert img.ndim == 2 and set(np.unique(img)) <= {0, 255}, path
    white = img > 127
    markers = find_markers(white, meta['params']['width'])
    assert len(markers) == 2, f'{path}: {len(markers)} markers'
    label = components(white, link_radius2(meta))
    ids = [{label[p] for p in group} for group in markers]
    assert all(len(i) == 1 for i in ids), path
    centres = [np.mean(group, 0) for group in markers]
    return ids[0] == ids[1], len(set(label.values())), float(np.hypot(*(centres[0] - centres[1])))


def check_dataset(root: str, flip: bool = False):
    """Per image (split, class folder, name, connected, components, marker distance); asserts the labels.

    ``flip`` reads every label the other way round: the checker must then fail (see the test below).
    """
    meta = json.load(open(os.path.join(root, 'pathfinder.json')))
    rows = []
    for split in ('train', 'val'):
        for cls in CLASSES:
            for name in sorted(os.listdir(os.path.join(root, split, cls))):
                connected, count, distance = check_image(os.path.join(root, split, cls, name), meta)
                label = int(cls[0]) ^ int(flip)
                assert connected == (label == 1), f'{split}/{cls}/{name}: markers connected={connected}'
                assert count == meta['params']['distractors'] + 2, f'{split}/{cls}/{name}: {count} curves'
                rows.append((split, cls, name, connected, count, distance))
    return rows


# ----------------------------------------------------------------------------------------------- helpers

def generate(out, *args):
    make_pathfinder.main(['--out', str(out), '--quiet', *map(str, args)])
    return str(out)


def fail(*argv) -> str:
    """Run the CLI in-process; it must exit with exactly one line of error."""
    return one_line_error(run_cli, make_pathfinder.main, *argv, prefix=os.path.basename(sys.argv[0]) + ': error: ')


def hashes(root: str) -> dict:
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = hashlib.sha256(open(path, 'rb').read()).hexdigest()
    return out


# ----------------------------------------------------------------------------------------------- labels

@pytest.fixture(scope='module')
def datasets(tmp_path_factory):
    """Every difficulty at 32 and 64 px (30 + 10 images each) and medium at 128 px (10 + 6): 256 images."""
    root = tmp_path_factory.mktemp('pf')
    sets = {}
    for size in (32, 64):
        for difficulty in make_pathfinder.PRESETS:
            sets[size, difficulty] = generate(root / f'{size}_{difficulty}', '--img-size', size, '--train', 30,
                                              '--val', 10, '--seed', 1, '--difficulty', difficulty, '--workers', 2)
    sets[128, 'medium'] = generate(root / '128_medium', '--img-size', 128, '--train', 10, '--val', 6,
                                   '--seed', 1, '--workers', 2)
    return sets


def test_labels_match_the_connectivity_of_the_drawn_curves(datasets):
    checked = {key: check_dataset(root) for key, root in datasets.items()}
    total = sum(len(rows) for rows in checked.values())
    assert total == 6 * 40 + 16
    for key, rows in checked.items():
        connected = [r[3] for r in rows]
        assert 0 < sum(connected) < len(connected), key  # both classes present in every set


def test_the_checker_fails_on_flipped_labels(datasets):
    with pytest.raises(AssertionError, match='markers connected'):
        check_dataset(datasets[64, 'hard'], flip=True)


def test_the_checker_tells_a_gap_from_two_curves(tmp_path):
    """Hand-drawn, no generator: a dashed line with markers at both ends, then the same cut into two curves."""
    meta = {'max_gap_distance': 2 + math.sqrt(2), 'params': {'clearance': 2 + math.sqrt(2) + 0.6, 'width': 1}}
    img = np.zeros((32, 32), np.uint8)
    for x in range(4, 28):
        if x % 5 not in (3, 4):  # dashes of 3 px, gaps of 2 px
            img[16, x] = 255
    img[15:18, 3:6] = img[15:18, 26:29] = 255  # 3x3 markers at both ends
    Image.fromarray(img).save(tmp_path / 'one.png')
    assert check_image(str(tmp_path / 'one.png'), meta)[:2] == (True, 1)
    img[16, 14:19] = 0  # a 5 px hole: wider than any gap, as wide as the clearance
    Image.fromarray(img).save(tmp_path / 'two.png')
    assert check_image(str(tmp_path / 'two.png'), meta)[:2] == (False, 2)


def test_the_classes_differ_only_in_connectivity(datasets):
    """Marker distance and amount of ink have the same distribution in both classes: no shortcut."""
    for key in ((64, 'medium'), (64, 'hard')):
        root = datasets[key]
        meta = json.load(open(os.path.join(root, 'pathfinder.json')))
        by_class = {0: [], 1: []}
        ink = {0: [], 1: []}
        for split in ('train', 'val'):
            for label, cls in enumerate(CLASSES):
                for name in os.listdir(os.path.join(root, split, cls)):
                    path = os.path.join(root, split, cls, name)
                    by_class[label].append(check_image(path, meta)[2])
                    ink[label].append(int((np.asarray(Image.open(path)) > 127).sum()))
        for values in (by_class, ink):
            a, b = np.array(values[0]), np.array(values[1])
            spread = np.concatenate([a, b]).std()
            assert abs(a.mean() - b.mean()) < 0.5 * spread, (key, a.mean(), b.mean(), spread)
        # the best single threshold on the marker distance is no better than a coin, give or take the sample
        d = np.array(by_class[0] + by_class[1])
        y = np.array([0] * len(by_class[0]) + [1] * len(by_class[1]))
        best = max(max(((d <= t) == y).mean(), ((d > t) == y).mean()) for t in d)
        assert best < 0.7, (key, best)


def test_on_hard_contours_the_direction_at_the_marker_gives_little_away():
    """The one cue left besides connectivity (pathfinder.py's docstring): at a connected pair's second marker the
    curve tends to point back at the first. On hard contours a threshold on that cosine is near chance."""
    p = pathfinder.resolve_params(64, 'hard')
    g = pathfinder.geometry(p)
    cosines, labels = [], []
    for i in range(160):
        a, b, _ = pathfinder.scene(pathfinder.image_rng(11, 'train', i), g)
        for label, end, inward in ((1, a[-1], a[-4]), (0, b[0], b[3])):  # 3 steps into the curve
            t, u = inward - end, a[0] - end
            cosines.append(t @ u / np.linalg.norm(t) / np.linalg.norm(u))
            labels.append(label)
    c, y = np.array(cosines), np.array(labels)
    best = max(max(((c > t) == y).mean(), ((c <= t) == y).mean()) for t in c)
    assert best < 0.62, best


# ----------------------------------------------------------------------------------------------- layout, determinism

def test_counts_are_balanced_and_the_json_describes_them(tmp_path):
    root = generate(tmp_path / 'pf', '--img-size', 40, '--train', 7, '--val', 4, '--seed', 3, '--workers', 1,
                    '--difficulty', 'easy')
    assert sorted(os.listdir(root)) == ['pathfinder.json', 'train', 'val']
    counts = {(s, c): len(os.listdir(os.path.join(root, s, c))) for s in ('train', 'val') for c in CLASSES}
    assert counts == {('train', CLASSES[0]): 4, ('train', CLASSES[1]): 3, ('val', CLASSES[0]): 2,
                      ('val', CLASSES[1]): 2}
    meta = json.load(open(os.path.join(root, 'pathfinder.json')))
    assert meta['splits'] == {'train': {CLASSES[0]: 4, CLASSES[1]: 3}, 'val': {CLASSES[0]: 2, CLASSES[1]: 2}}
    assert meta['img_size'] == 40 and meta['params']['dashes'] == 6
    for s, c in counts:
        for name in os.listdir(os.path.join(root, s, c)):
            with Image.open(os.path.join(root, s, c, name)) as img:
                assert (img.mode, img.size, img.format) == ('L', (40, 40), 'PNG')
    assert not [n for n in os.listdir(tmp_path) if n != 'pf']  # no temporary folder left behind


def test_same_arguments_give_the_same_bytes_whatever_the_workers(tmp_path):
    args = ('--img-size', 48, '--train', 12, '--val', 6, '--difficulty', 'hard')
    first = hashes(generate(tmp_path / 'a', *args, '--seed', 5, '--workers', 1))
    assert hashes(generate(tmp_path / 'b', *args, '--seed', 5, '--workers', 2)) == first
    assert len(first) == 19
    other = hashes(generate(tmp_path / 'c', *args, '--seed', 6, '--workers', 2))
    images = [k for k in first if k.endswith('.png')]
    assert all(other[k] != first[k] for k in images)  # another seed: every image differs
    train = {v for k, v in first.items() if k.startswith('train')}
    val = {v for k, v in first.items() if k.startswith('val')}
    assert not train & val and len(train) == 12  # train and val share no image


def test_grid_picture(tmp_path):
    out = tmp_path / 'grid.png'
    make_pathfinder.main(['--grid', str(out), '--img-size', '32', '--grid-columns', '3'])
    with Image.open(out) as img:
        rows, cell = 2 * len(make_pathfinder.PRESETS), 32 * 4
        assert img.size == (150 + 3 * (cell + 4), rows * (cell + 4) + 4)


def test_grid_picture_with_knobs_shows_only_the_chosen_preset_with_them(tmp_path):
    out = tmp_path / 'grid.png'
    make_pathfinder.main(['--grid', str(out), '--img-size', '32', '--grid-columns', '3', '--difficulty', 'easy',
                          '--dashes', '4', '--distractors', '1'])
    with Image.open(out) as img:
        assert img.size == (150 + 3 * (32 * 4 + 4), 2 * (32 * 4 + 4) + 4)  # connected and disconnected rows
        tile = np.array(img)[4:4 + 32 * 4:4, 150:150 + 32 * 4:4]  # first tile at 1 px per image pixel
    params = pathfinder.resolve_params(32, 'easy', dashes=4, distractors=1)
    assert np.array_equal(tile, pathfinder.make_image(params, 0, 'grid', 1))  # the seed-0 grid image of class 1


# ----------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize('argv, expected', [
    (['--img-size', '31'], "argument --img-size: must be between 32 and 256 px, got 31"),
    (['--img-size', '257'], "argument --img-size: must be between 32 and 256 px, got 257"),
    (['--img-size', 'big'], "argument --img-size: must be a whole number of pixels, got 'big'"),
    (['--train', '-5'], 'argument --train: must be a whole number >= 0, got -5'),
    (['--val', '-1'], 'argument --val: must be a whole number >= 0, got -1'),
    (['--distractors', '-2'], 'argument --distractors: must be a whole number >= 0, got -2'),
    (['--difficulty', 'extreme'], "argument --difficulty: invalid choice: 'extreme'"),
    (['--dash-gap', '0.5'], '--dash-gap must be a number >= 1, got 0.5'),
    (['--dash-length', 'nan'], "argument --dash-length: must be a finite number, got 'nan'"),
    (['--dashes', '0'], '--dashes must be >= 1, got 0'),
    (['--max-turn', '2'], '--max-turn must be at most 1 radian per step, got 2.0'),
    (['--distractors', '60'], '62 curves of 43 px, 4.0 px apart, cannot fit into 64 px images'),
    (['--train', '0', '--val', '0'], '--train and --val are both 0'),
])
def test_bad_input_is_one_line_naming_the_flag_and_value(tmp_path, argv, expected):
    message = fail('--out', tmp_path / 'pf', *argv)
    assert expected in message
    assert not (tmp_path / 'pf').exists()


def test_refuses_a_non_empty_output_folder_and_writes_nothing_on_failure(tmp_path):
    (tmp_path / 'pf').mkdir()
    (tmp_path / 'pf' / 'keep.txt').write_text('mine')
    assert f'--out {tmp_path / "pf"} already exists' in fail('--out', tmp_path / 'pf', '--train', 2, '--val', 2)
    assert os.listdir(tmp_path / 'pf') == ['keep.txt']
    assert 'nothing to do' in fail('--img-size', '64')
    assert '--grid must be a .png path' in fail('--grid', tmp_path / 'g.jpg')
    # curves that fit by area but not in practice: the first image fails before anything is written
    message = fail('--out', tmp_path / 'tight', '--img-size', 32, '--dashes', 30, '--distractors', 1, '--train', 2)
    assert 'cannot fit 3 curves' in message and not (tmp_path / 'tight').exists()
    assert sorted(os.listdir(tmp_path)) == ['pf']


def test_command_line_exit_status_and_progress_bar(tmp_path):
    done = processes.run([sys.executable, TOOL, '--out', str(tmp_path / 'pf'), '--img-size', '32', '--train', '4',
                          '--val', '2', '--workers', '1'], timeout=120)
    assert done.returncode == 0, done.stderr
    assert '6/6' in done.stderr and done.stdout == ''  # tqdm's bar on stderr
    bad = processes.run([sys.executable, TOOL, '--out', str(tmp_path / 'x'), '--img-size', '31'], timeout=120)
    assert bad.returncode != 0
    assert bad.stderr.strip() == ('make_pathfinder.py: error: argument --img-size: must be between 32 and 256 px, '
                                  'got 31 (see --help)')


@pytest.mark.parametrize('workers', [1, 2])
def test_sigterm_while_writing_leaves_nothing_on_disk(tmp_path, workers):
    import signal
    import time
    with processes.started([sys.executable, TOOL, '--out', str(tmp_path / 'pf'), '--img-size', '64', '--train',
                            '20000', '--val', '0', '--workers', str(workers), '--quiet'],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        deadline = time.time() + 60
        # wait until images are being written into the temporary folder
        while time.time() < deadline and not any(
                f.endswith('.png') for d, _, files in os.walk(tmp_path) for f in files):
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------------- training on it

@pytest.mark.slow
def test_train_imagenet_trains_one_epoch_on_the_folder(tmp_path):
    """The grayscale PNGs load as RGB (three equal channels) with the default flags; --no-aug and --crop-pct 1.0
    keep every marker in view."""
    import csv
    import importlib.util

    import torch

    data = generate(tmp_path / 'pf', '--img-size', 32, '--train', 16, '--val', 8, '--seed', 2, '--workers', 1)
    spec = importlib.util.spec_from_file_location('train_imagenet_pathfinder', os.path.join(ROOT, 'train_imagenet.py'))
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train.main(['--data-dir', data, '--model', 'sgconvnext_atto', '--img-size', '32', '--num-classes', '2',
                    '-b', '4', '-j', '0', '--device', 'cpu', '--opt', 'adamw', '--lr', '1e-3', '--warmup-epochs', '0',
                    '--epochs', '1', '--no-aug', '--crop-pct', '1.0', '--output', str(tmp_path / 'runs'),
                    '--experiment', 'pf'])
    finally:
        torch.set_num_threads(threads)
    with open(tmp_path / 'runs' / 'pf' / 'summary.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert [r['epoch'] for r in rows] == ['0']
    assert all(math.isfinite(float(rows[0][k])) for k in ('train_loss', 'eval_loss', 'eval_top1'))
    # 8 validation images: top-1 is a multiple of 12.5 %
    assert float(rows[0]['eval_top1']) % 12.5 == pytest.approx(0, abs=1e-6)
