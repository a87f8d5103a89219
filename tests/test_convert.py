"""ConvNeXt weights into SGConvNeXt (sgconvnext/convert.py, tools/convert_convnext.py).

References: numpy's SVD for the rank-1 approximation, F.conv2d with the rank-1 7x7 kernel in float64 for a layer,
timm's ConvNeXt itself for a whole model whose kernels are exactly separable."""
import argparse
import logging
import os
import re

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import sgconvnext
from cli_helpers import load_script, one_line_error
from sgconvnext import SGConv2d
from sgconvnext.cli import run_cli
from sgconvnext.convert import fit_axis_kernel, rank1_axis_kernels
from sgconvnext.training.checkpoint import load_checkpoint_file
from sgconvnext.training.config import CLIError
from sgconvnext.training.model import create_model_checked

convert_tool = load_script(os.path.join('tools', 'convert_convnext.py'), 'convert_convnext_tool')


def rank1_numpy(weight: torch.Tensor) -> np.ndarray:
    """The best rank-1 approximation of each (k, k) conv2d kernel, by numpy's SVD (Eckart-Young)."""
    out = []
    for w in weight[:, 0].double().numpy():
        u, s, vh = np.linalg.svd(w)
        out.append(s[0] * np.outer(u[:, 0], vh[0]))
    return np.stack(out)


def separable_convnext(name='convnext_atto', seed=0, **kwargs):
    """A float64 ConvNeXt whose parameters are all random (no init left) and whose 7x7 kernels are exactly
    separable."""
    torch.manual_seed(seed)
    model = timm.create_model(name, **kwargs).eval().double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d) and m.groups > 1:
                a, b = torch.randn(m.weight.shape[0], 7).double(), torch.randn(m.weight.shape[0], 7).double()
                m.weight.copy_((a[:, :, None] * b[:, None, :]).unsqueeze(1) * 0.3)
    return model


def test_rank1_is_the_best_separable_approximation_with_a_fixed_sign():
    torch.manual_seed(0)
    weight = torch.randn(16, 1, 7, 7, dtype=torch.float64)
    weight[3] = 0  # an all-zero kernel converts to zeros
    kh, kw, energy = rank1_axis_kernels(weight)
    product = (kh[:, :, None] * kw[:, None, :]).flip(-1, -2)  # back to conv2d's (correlation) orientation
    np.testing.assert_allclose(product.numpy(), rank1_numpy(weight), atol=1e-12)
    s = np.linalg.svd(weight[:, 0].numpy(), compute_uv=False)
    expected = np.where(s.sum(1) > 0, s[:, 0] ** 2 / np.maximum((s ** 2).sum(1), 1e-300), 1.0)
    np.testing.assert_allclose(energy.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(kh.norm(dim=1).numpy() ** 2, s[:, 0], rtol=1e-12)  # scale shared evenly
    np.testing.assert_allclose(kw.norm(dim=1).numpy() ** 2, s[:, 0], rtol=1e-12)
    centre = torch.where(kh[:, 3].abs() >= kw[:, 3].abs(), kh[:, 3], kw[:, 3])
    assert (centre[torch.arange(16) != 3] > 0).all()  # the larger centre entry is positive
    # any batch, any order, either sign of the kernel's SVD: each channel converts alike
    perm = torch.randperm(16)
    kh2, kw2, _ = rank1_axis_kernels(weight[perm][:5])
    assert torch.allclose(kh2, kh[perm][:5], atol=1e-12) and torch.allclose(kw2, kw[perm][:5], atol=1e-12)


@pytest.mark.parametrize('backend', ['matmul', 'fft', 'direct', 'auto'])
@pytest.mark.parametrize('l_max,kernel_dim', [((9, 6), 8), ((56, 56), 8), ((5, 11), 4), ((7, 8), 2), ((3, 2), 8)])
def test_converted_layer_is_the_rank1_conv2d_at_its_build_size(backend, l_max, kernel_dim):
    torch.manual_seed(1)
    channels = 6
    weight = torch.randn(channels, 1, 7, 7, dtype=torch.float64)
    layer = SGConv2d(channels, l_max, kernel_dim=kernel_dim, backend=backend).double()
    kh, kw, _ = rank1_axis_kernels(weight)
    with torch.no_grad():
        for module, taps in ((layer.kernel_h, kh), (layer.kernel_w, kw)):
            fitted, norm, error = fit_axis_kernel(module, taps)
            assert error < 1e-12  # kernel_dim 2, 4, 8 and every l_max hold the reachable taps exactly
            module.weight.copy_(fitted)
            module.norm.copy_(norm)
        layer.bias.normal_()
    x = torch.randn(2, channels, *l_max, dtype=torch.float64)
    rank1 = torch.from_numpy(rank1_numpy(weight)).unsqueeze(1)
    expected = F.conv2d(x, rank1, layer.bias, padding=3, groups=channels)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)


def test_far_sub_kernels_are_zero_and_norm_is_deterministic():
    layer = SGConv2d(4, 56, kernel_dim=8)
    kh, _, _ = rank1_axis_kernels(torch.randn(4, 1, 7, 7))
    fitted, norm, _ = fit_axis_kernel(layer.kernel_h, kh)
    assert fitted[:, :, 1:].abs().max() == 0 and fitted[:, :, 0, 4:].abs().max() == 0  # only offsets 0..3 used
    torch.manual_seed(123)
    other = SGConv2d(4, 56, kernel_dim=8)
    assert torch.equal(fit_axis_kernel(other.kernel_h, kh)[1], norm)  # not the random init's norm


@pytest.mark.parametrize('img_size', [64, 32])
def test_separable_convnext_converts_exactly(img_size, caplog):
    convnext = separable_convnext(num_classes=10)
    with caplog.at_level(logging.INFO, logger='sgconvnext'):
        model = timm.create_model('sgconvnext_atto', num_classes=10, img_size=img_size, pretrained=True,
                                  pretrained_cfg_overlay=dict(state_dict=convnext.state_dict(), num_classes=10))
    (report,) = [r.getMessage() for r in caplog.records if r.name.startswith('sgconvnext')]
    assert 'converted 12 7x7 kernels' in report and 'mean per stage: 100 %, 100 %, 100 %, 100 %' in report
    assert 'nothing kept its init' in report
    if img_size == 32:  # stage 2 and 3 maps (2 and 1 px) cannot hold offset 3: said so
        assert '8 on maps under 4 px' in report
    x = torch.randn(2, 3, img_size, img_size)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), convnext.float()(x), rtol=1e-5, atol=1e-5)
    # in float64 the conversion is exact to rounding
    model, convnext = model.double(), separable_convnext(num_classes=10)
    model.load_state_dict(sgconvnext.convert_convnext(convnext.state_dict(), model, log=False))
    with torch.no_grad():
        torch.testing.assert_close(model(x.double()), convnext(x.double()), rtol=1e-10, atol=1e-10)


def facebookresearch_layout(convnext) -> dict:
    """A timm ConvNeXt's state dict in facebookresearch's names (what timm's filter undoes)."""
    fb = {}
    for k, v in convnext.state_dict().items():
        k = k.replace('stem.', 'downsample_layers.0.').replace('conv_dw', 'dwconv').replace('mlp.fc', 'pwconv')
        k = k.replace('.blocks.', '.').replace('head.norm', 'norm').replace('head.fc', 'head')
        for i in (1, 2, 3):
            k = k.replace(f'stages.{i}.downsample.', f'downsample_layers.{i}.')
        fb[k] = v.reshape(v.shape[:2]) if 'pwconv' in k else v
    return fb


def test_facebookresearch_layout_converts_like_timms():
    convnext = separable_convnext()
    fb = facebookresearch_layout(convnext)
    model = timm.create_model('sgconvnext_atto')
    assert all(torch.equal(a, b) for a, b in zip(sgconvnext.convert_convnext(fb, model).values(),
                                                 sgconvnext.convert_convnext(convnext.state_dict(), model).values()))


def test_bad_input_is_refused_with_a_clear_error():
    state = timm.create_model('convnext_atto').state_dict()
    model = timm.create_model('sgconvnext_atto')
    with pytest.raises(ValueError, match='another model size'):
        sgconvnext.convert_convnext(timm.create_model('convnext_femto').state_dict(), model)
    bad = dict(state, **{'stages.1.blocks.0.conv_dw.weight': torch.randn(80, 1, 7, 6)})
    with pytest.raises(ValueError, match=r'stages\.1\.blocks\.0\.conv_dw\.weight must be .*\(80, 1, k, k\).*\(80, 1, 7, 6\)'):
        sgconvnext.convert_convnext(bad, model)
    bad = dict(state, **{'stages.2.blocks.3.conv_dw.weight': state['stages.2.blocks.3.conv_dw.weight'].clone()})
    bad['stages.2.blocks.3.conv_dw.weight'][5, 0, 2, 2] = float('nan')
    with pytest.raises(ValueError, match=r'stages\.2\.blocks\.3\.conv_dw\.weight has 1 non-finite'):
        sgconvnext.convert_convnext(bad, model)
    with pytest.raises(ValueError, match=r"sg_convert must be one of \('rank1', 'rank1_far_init', 'none'\), got 'svd'"):
        timm.create_model('sgconvnext_atto', sg_convert='svd')
    with pytest.raises(TypeError, match='sg_convert must be one of'):
        timm.create_model('sgconvnext_atto', sg_convert=1)


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_tool_writes_a_checkpoint_that_loads_as_converted(tmp_path, suffix, capsys):
    convnext = separable_convnext(num_classes=10)
    source = tmp_path / 'convnext.safetensors'
    save_file(convnext.float().state_dict(), str(source))
    out = tmp_path / f'sg{suffix}'
    convert_tool.main([str(source), str(out), '--model', 'sgconvnext_atto', '--img-size', '48'])
    model = timm.create_model('sgconvnext_atto', num_classes=10, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(out), num_classes=10)).double().eval()
    assert model.stages[0].blocks[0].conv_dw.l_max == (12, 12)  # the geometry of --img-size 48, from the file
    x = torch.randn(1, 3, 48, 48, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), convnext.double()(x), rtol=1e-5, atol=1e-5)  # saved in float32


def test_tool_refuses_bad_input_and_writes_nothing(tmp_path):
    source = tmp_path / 'convnext.pth'
    torch.save(timm.create_model('convnext_atto').state_dict(), source)
    out = tmp_path / 'out.pth'
    out.write_bytes(b'previous')
    cases = [
        ([str(source), str(tmp_path / 'out.onnx'), '--model', 'sgconvnext_atto'], 'OUT must end in .pth or .safetensors'),
        ([str(source), str(out), '--model', 'sgconvnext_femto'], 'another model size'),
        ([str(source), str(out), '--model', 'convnext_atto'], 'must be an sgconvnext model'),
        ([str(source), str(out), '--model', 'sgconvnext_atto', '--convert', 'svd'], 'sg_convert must be one of'),
        ([str(tmp_path / 'missing.pth'), str(out), '--model', 'sgconvnext_atto'], 'is not a file'),
    ]
    for argv, expected in cases:
        assert expected in one_line_error(run_cli, convert_tool.main, *argv)
    assert out.read_bytes() == b'previous' and sorted(os.listdir(tmp_path)) == ['convnext.pth', 'out.pth']


def test_the_summary_says_when_timm_leaves_the_head_at_its_init(caplog):
    state = timm.create_model('convnext_atto').state_dict()  # 1000 classes
    with caplog.at_level(logging.INFO, logger='sgconvnext'):
        timm.create_model('sgconvnext_atto', num_classes=10, pretrained=True,
                          pretrained_cfg_overlay=dict(state_dict=state))
    (report,) = [r.getMessage() for r in caplog.records if r.name.startswith('sgconvnext')]
    assert 'the head (head.fc, 10 classes) has 1000 classes in the checkpoint and keeps its init' in report
    caplog.clear()
    with caplog.at_level(logging.INFO, logger='sgconvnext'):
        sgconvnext.convert_convnext(state, timm.create_model('sgconvnext_atto'))  # offline: the head is converted too
    assert 'nothing kept its init' in caplog.records[0].getMessage()


def sg_reports(caplog):
    return [r for r in caplog.records if r.name.startswith('sgconvnext')]


def test_a_head_of_another_shape_keeps_the_model_init(tmp_path, caplog):
    torch.manual_seed(0)
    convnext = timm.create_model('convnext_atto', num_classes=21841)  # an in-22k checkpoint
    path = tmp_path / 'convnext_atto_in22k.pth'
    torch.save(convnext.state_dict(), path)
    torch.manual_seed(3)
    fresh = timm.create_model('sgconvnext_atto')
    torch.manual_seed(3)
    model = timm.create_model('sgconvnext_atto', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(model.head.fc.weight, fresh.head.fc.weight) and torch.equal(model.head.fc.bias, fresh.head.fc.bias)
    assert torch.equal(model.stem[0].weight, convnext.stem[0].weight) and torch.equal(model.head.norm.weight,
                                                                                      convnext.head.norm.weight)
    (report,) = sg_reports(caplog)
    assert 'the head (head.fc, 1000 classes) has 21841 classes in the checkpoint and keeps its init' in report.getMessage()
    # offline, and an SGConvNeXt checkpoint with such a head
    model.load_state_dict(sgconvnext.convert_convnext(convnext.state_dict(), fresh, log=False))
    caplog.clear()
    sg22k = timm.create_model('sgconvnext_atto', num_classes=21841).state_dict()
    model = timm.create_model('sgconvnext_atto', pretrained=True, pretrained_cfg_overlay=dict(state_dict=sg22k))
    assert model.head.fc.out_features == 1000 and torch.equal(model.stem[0].weight, sg22k['stem.0.weight'])
    assert 'has 21841 classes in the checkpoint and keeps its init' in sg_reports(caplog)[0].getMessage()


def test_the_summary_is_a_warning_of_its_own_logger(caplog):
    # no caplog.at_level: only what Python shows without any logging setup (WARNING and up) is captured
    state = timm.create_model('convnext_atto').state_dict()
    for method in ('rank1', 'none'):
        caplog.clear()
        timm.create_model('sgconvnext_atto', pretrained=True, sg_convert=method,
                          pretrained_cfg_overlay=dict(state_dict=state))
        (report,) = sg_reports(caplog)
        assert (report.name, report.levelno) == ('sgconvnext.convert', logging.WARNING)
        assert f'Warm start from ConvNeXt (sg_convert="{method}")' in report.getMessage()


def test_timms_layout_filter_runs_once(monkeypatch):
    calls = []
    for module in (sgconvnext.model, sgconvnext.convert):
        if hasattr(module, 'convnext_layout'):
            original = module.convnext_layout
            monkeypatch.setattr(module, 'convnext_layout', lambda sd, m, f=original: calls.append(1) or f(sd, m))
    timm.create_model('sgconvnext_atto', pretrained=True,
                      pretrained_cfg_overlay=dict(state_dict=timm.create_model('convnext_atto').state_dict()))
    assert len(calls) == 1


@pytest.mark.parametrize('name,kwargs,size', [
    ('convnext_femto', {}, r'femto \(depths \(2, 2, 6, 2\), dims \(48, 96, 192, 384\)\)'),  # wider: a reshape fails
    ('convnext_atto', dict(depths=(2, 2, 8, 2)), r'\(depths \(2, 2, 8, 2\), dims \(40, 80, 160, 320\)\)'),  # deeper: a key
])
def test_a_facebookresearch_checkpoint_of_another_size_names_both(tmp_path, name, kwargs, size):
    fb = {'model': facebookresearch_layout(timm.create_model(name, **kwargs))}
    expected = rf'another model size: {size}, the model is atto \(depths \(2, 2, 6, 2\), dims \(40, 80, 160, 320\)\)'
    with pytest.raises(ValueError, match=expected):
        sgconvnext.convert_convnext(fb, timm.create_model('sgconvnext_atto'))
    with pytest.raises(ValueError, match=expected):
        timm.create_model('sgconvnext_atto', pretrained=True, pretrained_cfg_overlay=dict(state_dict=fb))
    torch.save(fb, tmp_path / 'fb.pth')
    message = one_line_error(run_cli, convert_tool.main, tmp_path / 'fb.pth', tmp_path / 'out.pth', '--model',
                             'sgconvnext_atto')
    assert re.search(expected, message) and not (tmp_path / 'out.pth').exists()


def test_bad_entries_in_a_pretrained_load_are_value_errors():
    # timm's load_pretrained retries a filter that raises TypeError with one argument, hiding the message
    state = timm.create_model('convnext_atto').state_dict()
    bad = dict(state, **{'stages.0.blocks.0.conv_dw.weight': torch.ones(40, 1, 7, 7, dtype=torch.int64)})
    with pytest.raises(ValueError, match=r'stages\.0\.blocks\.0\.conv_dw\.weight must be a floating point tensor, '
                                         r'got torch\.int64'):
        timm.create_model('sgconvnext_atto', pretrained=True, pretrained_cfg_overlay=dict(state_dict=bad))
    with pytest.raises(ValueError, match="checkpoint entry 'epoch' is a int, not a tensor"):
        timm.create_model('sgconvnext_atto', pretrained=True, pretrained_cfg_overlay=dict(state_dict=dict(state, epoch=3)))


def test_convnext_weights_into_load_state_dict_name_the_way(tmp_path):
    convnext = timm.create_model('convnext_atto')
    model = timm.create_model('sgconvnext_atto')
    for layout, state in (('timm', convnext.state_dict()), ('facebookresearch', facebookresearch_layout(convnext))):
        with pytest.raises(ValueError, match=rf'a ConvNeXt state dict \({layout} layout.*--pretrained-path.*'
                                             r'convert_convnext'):
            model.load_state_dict(state)
    assert model.load_state_dict(convnext.state_dict(), strict=False).missing_keys  # a partial load is asked for
    path = tmp_path / 'convnext_atto.pth'
    torch.save(convnext.state_dict(), path)
    with pytest.raises(CLIError, match=r'ConvNeXt state dict.*--pretrained --pretrained-path PATH, not '
                                       r'--initial-checkpoint') as e:
        create_model_checked('sgconvnext_atto', checkpoint_path=str(path))  # train_imagenet.py --initial-checkpoint
    assert '\n' not in str(e.value)


def test_convert_convnext_needs_an_sgconvnext():
    state = timm.create_model('convnext_atto').state_dict()
    with pytest.raises(TypeError, match='model must be an SGConvNeXt .* got a ConvNeXt with no SGConv2d layers'):
        sgconvnext.convert_convnext(state, timm.create_model('convnext_atto'))


def test_the_tool_takes_the_ema_weights_as_pretrained_path_does(tmp_path, capsys):
    torch.manual_seed(0)
    raw, ema = timm.create_model('convnext_atto', num_classes=10), timm.create_model('convnext_atto', num_classes=10)
    source = tmp_path / 'train.pth.tar'
    torch.save({'state_dict': raw.state_dict(), 'epoch': 3,
                'state_dict_ema': {'module.' + k: v for k, v in ema.state_dict().items()}}, source)
    convert_tool.main([str(source), str(tmp_path / 'sg.pth'), '--model', 'sgconvnext_atto', '--img-size', '64'])
    converted = torch.load(tmp_path / 'sg.pth', weights_only=True)
    warm = timm.create_model('sgconvnext_atto', num_classes=10, pretrained=True,
                             pretrained_cfg_overlay=dict(file=str(source), num_classes=10))  # --pretrained-path
    for key in ('stem.0.weight', 'head.fc.weight'):
        assert torch.equal(converted[key], ema.state_dict()[key]) and torch.equal(warm.state_dict()[key], converted[key])
    assert 'from its state_dict_ema' in capsys.readouterr().out


def test_no_checkpoint_is_unpickled_on_torch_without_safe_globals(tmp_path, monkeypatch):
    plain, training = tmp_path / 'plain.pth', tmp_path / 'train.pth.tar'
    state = timm.create_model('convnext_atto').state_dict()
    torch.save(state, plain)
    torch.save({'state_dict': state, 'args': argparse.Namespace(model='convnext_atto')}, training)
    monkeypatch.delattr(torch.serialization, 'safe_globals')  # torch < 2.5
    assert torch.equal(load_checkpoint_file(str(plain))['stem.0.weight'], state['stem.0.weight'])
    with pytest.raises(CLIError, match=r'cannot read checkpoint .* safely with torch .*torch >= 2\.5'):
        load_checkpoint_file(str(training))
    message = one_line_error(run_cli, convert_tool.main, training, tmp_path / 'sg.pth', '--model', 'sgconvnext_atto')
    assert 'torch >= 2.5' in message and not (tmp_path / 'sg.pth').exists()


def test_rank1_far_init_keeps_the_near_taps_and_a_fresh_far_field():
    """Offsets -3..3: rank1's taps exactly; beyond: the taps of a fresh layer of the same seed, exactly."""
    teacher = separable_convnext().float()
    state = teacher.state_dict()

    def build(seed=0):
        torch.manual_seed(seed)
        return timm.create_model('sgconvnext_atto', img_size=64)

    fresh, near, far = build(), build(), build()
    near.load_state_dict(sgconvnext.convert_convnext(state, near, 'rank1', log=False))
    far.load_state_dict(sgconvnext.convert_convnext(state, far, 'rank1_far_init', log=False))
    layers = [(name, m) for name, m in far.named_modules() if isinstance(m, SGConv2d)]
    assert len(layers) == 12
    for name, layer in layers:
        for axis in ('kernel_h', 'kernel_w'):
            k_far, k_near, k_fresh = (getattr(model.get_submodule(name), axis).kernel().detach()
                                      for model in (far, near, fresh))
            centre = k_far.shape[1] // 2
            offsets = torch.arange(k_far.shape[1]) - centre
            inner = offsets.abs() <= 3
            torch.testing.assert_close(k_far[:, inner], k_near[:, inner], rtol=1e-5, atol=1e-6)
            if (~inner).any():  # stages 2 and 3 of a 64 px model have maps of 4 and 2: no taps beyond 3
                torch.testing.assert_close(k_far[:, ~inner], k_fresh[:, ~inner], rtol=1e-5, atol=1e-6)
                assert k_fresh[:, ~inner].abs().amax() > 0 and k_near[:, ~inner].abs().amax() == 0
