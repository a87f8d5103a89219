"""The distance task (studies/reach): canvases with the cue exactly d px from the target, a control whose reach
is provably 17 px (checked with erf's gradients, and by swapping the cue), one run and the study's report."""
import json
import os
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, 'studies', 'reach'), os.path.join(ROOT, 'tools')]
distance_cues = pytest.importorskip('distance_cues')  # needs Debian's dataset-fashion-mnist
if not os.path.isdir('/usr/share/datasets/fashion-mnist'):
    pytest.skip('dataset-fashion-mnist is not installed', allow_module_level=True)
import distance_run  # noqa: E402
import distance_study  # noqa: E402
import erf  # noqa: E402


@pytest.fixture(scope='module')
def items():
    return distance_cues.Items('val', limit=2000)


def boxes(mask):
    ys, xs = np.nonzero(mask)
    return ys.min(), xs.min()


@pytest.mark.parametrize('distance', [28, 64, 100])
def test_the_cue_lies_d_px_from_the_target_along_one_axis(items, distance):
    rng = np.random.default_rng(0)
    for _ in range(20):
        image, labels = distance_cues.make_canvas(rng, items, distance)
        target = labels > 0
        cue = (image >= distance_cues.INK) & ~target
        assert target.any() and cue.any() and image.shape == labels.shape == (128, 128)
        assert len(set(labels[target].tolist())) == 1  # one cue class per canvas
        # the items' ink spans at most their 28 px boxes, which are d apart on one axis and aligned on the other
        ty, tx = (np.nonzero(target)[i] for i in (0, 1))
        cy, cx = (np.nonzero(cue)[i] for i in (0, 1))
        gap = max(cy.min() - ty.max(), ty.min() - cy.max(), cx.min() - tx.max(), tx.min() - cx.max())
        assert gap >= distance_cues.target_reach(distance)


def test_bad_distances_and_a_fixed_validation_set(items):
    with pytest.raises(ValueError, match='distance must be in 28..100 for a 128 px canvas'):
        distance_cues.make_canvas(np.random.default_rng(0), items, 101)
    a, b = distance_cues.validation_set(items, 64, 5), distance_cues.validation_set(items, 64, 5)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_the_control_sees_exactly_its_reach():
    torch.manual_seed(0)
    control = distance_run.LocalCNN().eval()
    control.body[-1].bias.data.fill_(10.0)  # positive outputs: erf's relu passes every path
    reaches = []
    for pixel in range(60, 68):  # every phase of the stride-4 grid, twice
        x = torch.randn(1, 1, 128, 128, requires_grad=True)
        torch.relu(control(x)[0, :, pixel, pixel]).sum().backward()
        rows, cols = torch.nonzero(x.grad[0, 0] != 0, as_tuple=True)
        reaches.append(int(max((rows - pixel).abs().max(), (cols - pixel).abs().max())))
    assert max(reaches) == distance_run.LocalCNN.REACH and min(reaches) == distance_run.LocalCNN.REACH - 1


def test_the_control_cannot_read_a_cue_beyond_its_reach(items):
    """The same canvas with a cue of the other class in the cue's place: the control's output on the target is
    the same (so it is at chance there), while the labels it should give differ."""
    import copy
    torch.manual_seed(0)
    control = distance_run.LocalCNN().eval()
    distance = distance_cues.ITEM - 1 + distance_run.LocalCNN.REACH + 1  # the first d the proof covers
    swapped = copy.copy(items)
    swapped.cues = items.cues[::-1]  # the same draws give the same places and target, the other cue class
    (image, labels), (other, other_labels) = (distance_cues.make_canvas(np.random.default_rng(3), i, distance)
                                              for i in (items, swapped))
    target = labels > 0  # the same pixels; the right label there is the other one (swapped holds the other cue)
    assert np.array_equal(target, other_labels > 0) and np.array_equal(image[target], other[target])
    assert not np.array_equal(image, other)
    outs = [control(distance_run.to_batch(x[None], labels[None])[0])[0] for x in (image, other)]
    target = torch.from_numpy(target)
    assert torch.equal(outs[0][:, target], outs[1][:, target])
    assert not torch.equal(outs[0], outs[1])


def test_a_run_and_the_study_report(tmp_path):
    pytest.importorskip('segmentation_models_pytorch')
    pytest.importorskip('matplotlib')
    out = tmp_path / 'study'
    flags = ['--out', str(out), '--models', 'convnext_atto', '--distances', '32', '--seeds', '0', '--steps', '2',
             '--batch-size', '2', '--val-count', '4', '--erf-images', '2', '--jobs', '1',
             '--plot', str(tmp_path / 'sweep.png'), '--erf-plot', str(tmp_path / 'erf.png'),
             '--write', str(tmp_path / 'RESULTS.md')]
    distance_study.main(flags)
    results = json.loads((out / 'results.json').read_text())
    assert set(results) == {'local_cnn-d32-seed0', 'convnext_atto-d32-seed0'}
    for r in results.values():
        assert 0 <= r['target_acc'] <= 100 and 0 < r['erf_t20'] <= r['erf_t99'] <= 1
    assert 'Target-pixel accuracy' in (tmp_path / 'RESULTS.md').read_text()
    assert (tmp_path / 'sweep.png').stat().st_size > 1000 and (tmp_path / 'erf.png').stat().st_size > 1000
    commands = (out / 'commands.txt').read_text().splitlines()
    assert len(commands) == 2 and all('--distance 32' in c for c in commands)


def test_the_classifier_erf_study_reports_the_models_it_finds(tmp_path):
    pytest.importorskip('matplotlib')
    import timm
    from tiny_dataset import make_image_folder
    import fmnist_erf
    data = make_image_folder(tmp_path / 'data', classes=2, train=1, val=2, size=40)
    runs = tmp_path / 'runs'
    (runs / 'convnext_atto-64px-seed0').mkdir(parents=True)
    torch.save(timm.create_model('convnext_atto', num_classes=10).state_dict(),
               runs / 'convnext_atto-64px-seed0' / 'last.pth.tar')
    out, write = tmp_path / 'erf', tmp_path / 'RESULTS.md'
    fmnist_erf.main(['--runs', str(runs), '--data-dir', data, '--out', str(out), '--num-images', '2',
                     '--plot', str(tmp_path / 'erf.png'), '--write', str(write)])
    rows = [line for line in (out / 'erf.md').read_text().splitlines() if line.startswith('| ') and 'model' not in line]
    assert [r.split(' | ')[0] for r in rows] == ['| convnext_atto, init', '| convnext_atto, trained (teacher)',
                                                 '| sgconvnext_atto, init']
    assert '<!-- fmnist-erf-96-fixed:start -->' in write.read_text() and (tmp_path / 'erf.png').stat().st_size > 1000
