"""studies/detection: the scene generator's boxes, COCO scoring, a two-step Faster R-CNN run per backbone, the study's
plan and report. Fashion-MNIST is faked by a few IDX files of bright rectangles (CI has no dataset package)."""
import gzip
import json
import os
import struct
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, 'studies', 'detection')]

import detection_study  # noqa: E402
import fashion_boxes  # noqa: E402

TINY = ['--min-side', '64', '--max-side', '96', '--batch-size', '2', '--out-channels', '16', '--representation', '32',
        '--rois', '16', '--proposals', '50', '--log-every', '1']


def write_idx(path, array):
    """An IDX file (uint8, big-endian dims), gzipped, as Fashion-MNIST ships them."""
    header = struct.pack('>HBB', 0, 0x08, array.ndim) + struct.pack(f'>{array.ndim}I', *array.shape)
    with gzip.open(path, 'wb') as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope='module')
def source(tmp_path_factory):
    """A fake Fashion-MNIST folder: 20 images per split, each a bright rectangle of its own size on black."""
    folder = tmp_path_factory.mktemp('fmnist')
    rng = np.random.default_rng(0)
    for split, (images_name, labels_name) in fashion_boxes.FILES.items():
        images = np.zeros((20, 28, 28), np.uint8)
        for k in range(20):
            y0, x0 = rng.integers(0, 10, size=2)
            images[k, y0:y0 + rng.integers(8, 18), x0:x0 + rng.integers(8, 18)] = rng.integers(120, 256)
        write_idx(folder / images_name, images)
        write_idx(folder / labels_name, np.arange(20) % 10)
    return str(folder)


def test_scenes_are_fixed_by_the_seed_and_their_boxes_hold_the_items(source, tmp_path):
    images, labels = fashion_boxes.load_items('val', source)
    val = fashion_boxes.validation_set(images, labels, count=12)
    again = fashion_boxes.validation_set(images, labels, count=12)
    assert all((a[0] == b[0]).all() and (a[1] == b[1]).all() for a, b in zip(val, again))
    for image, boxes, classes in val:
        h, w = image.shape[:2]
        assert image.dtype == np.uint8 and image.shape[2] == 3 and 256 <= h <= 512 and 256 <= w <= 512
        assert 1 <= len(boxes) <= 5 and set(classes.tolist()) <= set(range(1, 11))
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        assert (sides >= 8).all() and (sides <= 4 * 28 + 1).all()  # rectangles of 8-17 px at 1x-4x
        for i in range(len(boxes)):  # no two items overlap
            for j in range(i):
                a, b = boxes[i], boxes[j]
                assert a[0] >= b[2] or a[2] <= b[0] or a[1] >= b[3] or a[3] <= b[1]
    coco = fashion_boxes.coco_ground_truth(val)
    assert len(coco['images']) == 12 and len(coco['annotations']) == sum(len(s[1]) for s in val)
    assert len(coco['categories']) == 10
    fashion_boxes.draw_grid(str(tmp_path / 'grid.png'), val[:3], width=200)
    assert (tmp_path / 'grid.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_the_items_are_drawn_inside_their_boxes():
    """Every pixel where the scene differs from its background lies in a box, and the rectangle items fill theirs."""
    items = np.zeros((1, 28, 28), np.uint8)
    items[0, 5:20, 3:25] = 255
    image, boxes, _ = fashion_boxes.make_scene(np.random.default_rng(1), items, np.zeros(1, np.int64), min_side=128,
                                               max_side=160)
    rng = np.random.default_rng(1)  # the same draws: the canvas size, then its background
    height, width = (int(rng.integers(128, 161)) for _ in range(2))
    plain = np.clip(np.rint(fashion_boxes.background(rng, height, width)), 0, 255).astype(np.uint8)
    changed = (image != plain).any(2)
    inside = np.zeros_like(changed)
    for x0, y0, x1, y1 in boxes.astype(int):
        inside[y0:y1, x0:x1] = True
        assert changed[y0:y1, x0:x1].mean() > 0.9
    assert changed.any() and not (changed & ~inside).any()


class Oracle(torch.nn.Module):
    """A 'detector' answering the ground truth of ``samples``, in order: its COCO AP must be 100."""

    def __init__(self, samples):
        super().__init__()
        self.samples, self.seen = samples, 0

    def forward(self, images):
        out = []
        for _ in images:
            _, boxes, labels = self.samples[self.seen]
            self.seen += 1
            out.append(dict(boxes=torch.from_numpy(boxes), labels=torch.from_numpy(labels),
                            scores=torch.ones(len(labels))))
        return out


def test_coco_scoring_gives_the_ground_truth_100_and_nothing_0(source):
    pytest.importorskip('pycocotools')
    import detection_run
    val = fashion_boxes.validation_set(*fashion_boxes.load_items('val', source), count=5, min_side=64, max_side=96)
    perfect = detection_run.evaluate(Oracle(val), val, batch_size=2)
    assert perfect['AP'] == pytest.approx(100) and perfect['AP50'] == pytest.approx(100)
    assert detection_run.evaluate(Oracle([(None, np.zeros((0, 4), np.float32), np.zeros(0, np.int64))] * 5), val
                                  )['AP'] == 0  # no detections at all


@pytest.mark.slow
@pytest.mark.parametrize('model', ['sgconvnext_atto', 'convnext_atto'])
def test_a_two_step_run_trains_evaluates_and_summarizes(source, tmp_path, model, one_thread):
    pytest.importorskip('pycocotools')
    import detection_run
    out = tmp_path / model
    summary = detection_run.main(['--model', model, '--out', str(out), '--steps', '2', '--eval-every', '2',
                                  '--val-count', '3', '--source', source, *TINY])
    assert summary['canvas'] == 96 and summary['steps'] == 2 and 0 <= summary['AP'] <= 100
    assert summary['steps_per_s'] > 0 and summary['threads'] == 1
    assert json.loads((out / 'summary.json').read_text())['AP50'] == summary['AP50']
    assert len((out / 'train.csv').read_text().splitlines()) == 3  # header + a row per step
    assert len((out / 'eval.csv').read_text().splitlines()) == 2  # header + the evaluation at step 2


def test_the_study_plans_every_model_and_seed_with_the_same_flags(tmp_path, capsys):
    detection_study.main(['--out', str(tmp_path / 'out'), '--seeds', '0', '1', '--steps', '40', '--dry-run'])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith('[dry] ')]
    assert len(lines) == 4 and all('detection_run.py' in line for line in lines)
    assert [line.split('--model ')[1].split()[0] for line in lines] == ['sgconvnext_atto', 'convnext_atto'] * 2
    flags = {line.split(' --seed ')[1].split(' ', 1)[1].split(' --out ')[0] for line in lines}
    assert flags == {'--steps 40 --eval-every 50 --lr 0.0004 --val-count 200'}  # all but --model, --seed, --out
    assert not os.path.exists(tmp_path / 'out' / 'commands.txt')


def fake_run(folder, model, seed, ap):
    os.makedirs(folder)
    summary = dict(model=model, seed=seed, steps=4, batch_size=2, AP=ap, AP50=2 * ap, AP75=ap / 2, steps_per_s=0.5,
                   train_s=8.0, eval_s=1.0, wall_s=10.0, args={})
    (folder / 'summary.json').write_text(json.dumps(summary))
    (folder / 'train.csv').write_text('step,loss\n2,1.5\n4,1.0\n')
    (folder / 'eval.csv').write_text(f'step,AP,AP50\n2,{ap / 2},{ap}\n4,{ap},{2 * ap}\n')


def test_the_report_tables_means_and_draws_from_saved_results(tmp_path):
    out = tmp_path / 'out'
    for model in ('sgconvnext_atto', 'convnext_atto'):
        for seed, ap in ((0, 10.0), (1, 20.0)):
            fake_run(out / f'{model}-seed{seed}', model, seed, ap)
    doc = tmp_path / 'RESULTS.md'
    doc.write_text('# Results\n\nother text\n')
    runs = detection_study.report(detection_study.parse_args(['--out', str(out), '--write', str(doc)]))
    assert len(runs) == 4 and runs[0]['curves']['AP'] == [5.0, 10.0]
    text = doc.read_text()
    assert text.startswith('# Results\n\nother text\n') and '| **convnext_atto** | mean of 2 | 15.00 ± 7.07 |' in text
    pytest.importorskip('matplotlib')
    png = tmp_path / 'curves.png'
    detection_study.main(['--from-results', str(out / 'results.json'), '--plot', str(png)])
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
