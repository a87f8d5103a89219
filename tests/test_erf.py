"""tools/erf.py: RepLKNet's effective receptive field. The analytic case is a single k x k conv, whose centre
output depends on exactly the k x k input pixels around it, with the conv's weights as gradient; then the CLI on
both families."""
import json
import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))
import erf  # noqa: E402
from tiny_dataset import make_image_folder  # noqa: E402

SIDE, K = 33, 5


def single_conv(weight=None):
    conv = nn.Conv2d(1, 1, K, padding=K // 2)
    with torch.no_grad():
        conv.weight.copy_(torch.ones_like(conv.weight) if weight is None else weight)
        conv.bias.fill_(1e3)  # the centre output stays positive: relu passes the whole gradient
    return conv


def test_the_centre_gradient_of_a_conv_is_its_kernel_around_the_centre():
    torch.manual_seed(0)
    weight = torch.rand(1, 1, K, K)
    grad = erf.centre_gradient(single_conv(weight), torch.randn(1, 1, SIDE, SIDE))
    expected = torch.zeros(SIDE, SIDE)
    c, r = SIDE // 2, K // 2
    expected[c - r:c + r + 1, c - r:c + r + 1] = weight[0, 0]  # F.conv2d is a correlation: no flip
    torch.testing.assert_close(grad[0], expected)


def test_the_area_ratios_of_a_uniform_k_by_k_conv():
    images = [torch.randn(1, 1, SIDE, SIDE) for _ in range(3)]
    data = erf.contribution_map(single_conv(), images)
    assert data.shape == (SIDE, SIDE) and data.sum() == pytest.approx(3 * K * K)
    ratios = erf.area_ratios(data)
    # scaled: 1 on the 5x5 window, 0 elsewhere; a 3x3 square holds 9/25 = 36 %, the 5x5 all of it
    area = SIDE * SIDE
    assert ratios == {0.2: (3, 9 / area), 0.3: (3, 9 / area), 0.5: (5, 25 / area), 0.99: (5, 25 / area)}
    assert erf.support_side(data) == K


def test_the_support_of_two_stacked_convs_is_their_combined_reach():
    net = nn.Sequential(single_conv(), single_conv())  # 5x5 then 5x5: 9x9
    assert erf.support_side(erf.contribution_map(net, [torch.randn(1, 1, SIDE, SIDE)])) == 2 * K - 1
    assert erf.support_side(np.zeros((4, 4))) == 0


def test_a_spread_out_map_needs_a_larger_square():
    h = w = 21
    yy, xx = np.mgrid[:h, :w] - 10
    narrow, wide = (np.exp(-(yy ** 2 + xx ** 2) / (2 * s ** 2)) * 100 for s in (1.5, 5.0))
    for t in erf.THRESHOLDS:
        assert erf.area_ratios(narrow)[t][1] < erf.area_ratios(wide)[t][1]


def test_errors_say_what_was_expected():
    with pytest.raises(ValueError, match='zero everywhere'):
        erf.area_ratios(np.zeros((5, 5)))
    with pytest.raises(ValueError, match='at least one image'):
        erf.contribution_map(single_conv(), [])
    with pytest.raises(ValueError, match='feature map'):
        erf.centre_gradient(lambda x: x.flatten(1), torch.randn(1, 1, 8, 8))


@pytest.mark.parametrize('model', ['sgconvnext_atto', 'convnext_atto'])
def test_the_cli_writes_ratios_a_picture_and_the_map(tmp_path, model):
    pytest.importorskip('matplotlib')
    data = make_image_folder(tmp_path / 'data', classes=2, train=1, val=2, size=40)
    out, matrix, results = tmp_path / 'erf.png', tmp_path / 'erf.npy', tmp_path / 'erf.json'
    erf.main(['--model', model, '--data-dir', data, '--img-size', '96', '--num-images', '3', '--num-classes', '2',
              '--out', str(out), '--matrix', str(matrix), '--results-file', str(results)])
    summary = json.loads(results.read_text())
    ratios = [summary[f'area_ratio_t{t}'] for t in (20, 30, 50, 99)]
    assert summary['stage'] == 3 and summary['input_size'] == [3, 96, 96] and summary['images'] == 3
    assert 0 < ratios[0] <= ratios[1] <= ratios[2] <= ratios[3] <= 1
    # at init the blocks are scaled by 1e-6: the centre stage-3 cell sees its 32x32 patch (pixels 32..63), which
    # the centred square around pixel 48 holds from side 33 on; the rest is far under 1 %
    assert summary['side_t99'] == 33 and summary['area_ratio_t99'] == pytest.approx(33 * 33 / 96 ** 2, abs=1e-4)
    assert np.load(matrix).shape == (96, 96) and out.stat().st_size > 1000


def test_a_checkpoint_changes_the_map(tmp_path):
    import timm
    import sgconvnext  # noqa: F401
    data = make_image_folder(tmp_path / 'data', classes=2, train=1, val=2, size=40)
    torch.manual_seed(1)
    model = timm.create_model('convnext_atto', num_classes=2)
    for block in model.stages[3].blocks:  # layer scale 1e-6 at init: make the blocks matter
        block.gamma.data.fill_(1.0)
    torch.save(model.state_dict(), tmp_path / 'w.pth')
    maps = []
    for extra in ([], ['--checkpoint', str(tmp_path / 'w.pth')]):
        erf.main(['--model', 'convnext_atto', '--data-dir', data, '--img-size', '96', '--num-images', '2',
                  '--num-classes', '2', '--matrix', str(tmp_path / 'm.npy'), *extra])
        maps.append(np.load(tmp_path / 'm.npy'))
    assert not np.allclose(maps[0], maps[1])


def test_an_even_stage_map_is_refused_with_a_size_that_works(tmp_path):
    from sgconvnext.training.config import CLIError
    data = make_image_folder(tmp_path / 'data', classes=2, train=1, val=1, size=40)
    with pytest.raises(CLIError, match=r'gives stage 3 a 2x2 map.*--img-size 96'):
        erf.main(['--model', 'convnext_atto', '--data-dir', data, '--img-size', '64', '--num-classes', '2'])
    with pytest.raises(CLIError, match=r'--stage must be in -4..3 for convnext_atto \(4 stages\), got -5'):
        erf.main(['--model', 'convnext_atto', '--data-dir', data, '--img-size', '96', '--stage', '-5'])
