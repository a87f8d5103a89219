"""SGConvNeXt as a timm model: registry, API, any resolution, weights and warm start from ConvNeXt."""
import logging
import os
import pickle

import pytest
import torch
import timm
from timm.optim import create_optimizer_v2
from safetensors.torch import save_file

import sgconvnext
from sgconvnext import SGConv2d, SGConvNeXt

VARIANTS = ('atto', 'femto', 'pico', 'nano', 'tiny', 'small', 'base', 'large')


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_every_variant():
    assert sorted(timm.list_models('sgconvnext*')) == sorted(f'sgconvnext_{v}' for v in VARIANTS)


@pytest.mark.parametrize('variant', VARIANTS)
def test_variant_matches_its_convnext_twin(variant):
    ours = timm.create_model(f'sgconvnext_{variant}', device='meta')
    twin = timm.create_model(f'convnext_{variant}', device='meta')
    print(f'sgconvnext_{variant}: {count(ours) / 1e6:.3f}M params, convnext_{variant}: {count(twin) / 1e6:.3f}M')
    assert abs(count(ours) / count(twin) - 1) < 0.10
    # Same architecture but the token mixer: every non-conv_dw parameter has the same name and shape.
    shared = {k: v.shape for k, v in twin.state_dict().items() if '.conv_dw.' not in k}
    assert {k: v.shape for k, v in ours.state_dict().items() if '.conv_dw.' not in k} == shared
    mixers = [m for m in ours.modules() if isinstance(m, SGConv2d)]
    assert len(mixers) == sum(len(s.blocks) for s in twin.stages)
    assert not any(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (7, 7) for m in ours.modules())


def test_stage_kernels_are_sized_for_img_size():
    model = timm.create_model('sgconvnext_atto', img_size=(160, 96))
    sizes = [stage.blocks[0].conv_dw.l_max for stage in model.stages]
    assert sizes == [(40, 24), (20, 12), (10, 6), (5, 3)]


def test_stage_kernels_match_the_real_map_sizes():
    model = timm.create_model('sgconvnext_atto', img_size=(225, 100))
    x = torch.randn(1, 3, 225, 100)
    maps = [tuple(f.shape[-2:]) for f in model.forward_intermediates(x, intermediates_only=True)]
    assert [stage.blocks[0].conv_dw.l_max for stage in model.stages] == maps == [(56, 25), (28, 12), (14, 6), (7, 3)]


def test_meta_device_model_loads_real_weights():
    real = timm.create_model('sgconvnext_atto').eval()
    meta = timm.create_model('sgconvnext_atto', device='meta').to_empty(device='cpu').eval()
    meta.load_state_dict(real.state_dict())
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(meta(x), real(x))


def test_create_model_kwargs_pass_through():
    model = timm.create_model('sgconvnext_atto', num_classes=7, in_chans=1, drop_path_rate=0.1, global_pool='max',
                              sg_kernel_dim=4, sg_decay=0.25, sg_backend='fft')
    layer = model.stages[0].blocks[0].conv_dw
    assert (layer.backend, layer.kernel_h.kernel_dim, layer.kernel_h.decay) == ('fft', 4, 0.25)
    assert model.stem[0].in_channels == 1 and model.get_classifier().out_features == 7
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 7)


@pytest.mark.parametrize('size', [(64, 64), (48, 80), (96, 64), (32, 32)])
def test_forward_backward_any_size(size):
    torch.manual_seed(0)
    model = timm.create_model('sgconvnext_atto', num_classes=5, img_size=64)
    x = torch.randn(2, 3, *size)
    out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f'parameters without a gradient (DDP would need find_unused_parameters): {missing}'


@pytest.mark.slow
@pytest.mark.parametrize('size', [160, 256, 288, 384, (256, 320)])
def test_model_built_for_224_runs_at_other_resolutions(size):
    model = timm.create_model('sgconvnext_atto').eval()
    size = size if isinstance(size, tuple) else (size, size)
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, 3, *size))
    assert features.shape == (1, 320, size[0] // 32, size[1] // 32)


def test_running_at_another_size_changes_no_state():
    model = timm.create_model('sgconvnext_atto', img_size=64).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model(torch.randn(1, 3, 128, 96))
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def test_timm_api():
    model = timm.create_model('sgconvnext_atto', num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    assert feats.shape == (2, 320, 2, 2)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 320)
    assert model.get_classifier().out_features == 10
    model.reset_classifier(4)
    assert model(x).shape == (2, 4)
    final, intermediates = model.forward_intermediates(x)
    assert [t.shape[1:] for t in intermediates] == [(40, 16, 16), (80, 8, 8), (160, 4, 4), (320, 2, 2)]
    assert torch.equal(final, model.forward_features(x))
    assert model.pretrained_cfg['first_conv'] == 'stem.0' and model.pretrained_cfg['classifier'] == 'head.fc'
    assert model.pretrained_cfg['crop_pct'] == 0.875 and model.pretrained_cfg['input_size'] == (3, 224, 224)
    assert model.group_matcher()['stem'] == '^stem'


def test_no_weight_decay_lists_every_kernel_and_timm_optimizer_skips_them():
    model = timm.create_model('sgconvnext_atto')
    names = model.no_weight_decay()
    kernel_params = {n for n, _ in model.named_parameters() if '.kernel_' in n}
    assert names == kernel_params and len(names) == 2 * 12
    optimizer = create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05)
    no_decay = {id(p) for g in optimizer.param_groups if g['weight_decay'] == 0 for p in g['params']}
    assert all(id(p) in no_decay for n, p in model.named_parameters() if n in names)


def test_features_only():
    model = timm.create_model('sgconvnext_atto', features_only=True, out_indices=(0, 2, 3))
    assert model.feature_info.channels() == [40, 160, 320]
    assert model.feature_info.reduction() == [4, 16, 32]
    outs = model(torch.randn(1, 3, 64, 96))
    assert [o.shape for o in outs] == [(1, 40, 16, 24), (1, 160, 4, 6), (1, 320, 2, 3)]


def test_fx_feature_extraction():
    torch.manual_seed(0)
    model = timm.create_model('sgconvnext_atto', features_only=True, feature_cls='fx')
    torch.manual_seed(0)
    ref = timm.create_model('sgconvnext_atto')  # same seed, same weights
    x = torch.randn(1, 3, 64, 64)
    for a, b in zip(model(x), ref.forward_intermediates(x, intermediates_only=True)):
        torch.testing.assert_close(a, b)


def test_torch_export_whole_model():
    model = timm.create_model('sgconvnext_atto').eval()
    x = torch.randn(1, 3, 64, 64)
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), model(x))


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = timm.create_model('sgconvnext_atto', num_classes=3)
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[n], rtol=1e-5, atol=1e-6, msg=n)


# --- weights ---------------------------------------------------------------------------------------------------

def test_pretrained_without_a_file_fails_at_once():
    with pytest.raises(ValueError, match='No ImageNet weights exist for sgconvnext_atto.*pretrained_cfg_overlay'):
        timm.create_model('sgconvnext_atto', pretrained=True)


def save_checkpoint(state_dict, path):
    if path.endswith('.safetensors'):
        save_file({k: v.contiguous() for k, v in state_dict.items()}, path)
    elif path.endswith('.pth.tar'):
        torch.save({'epoch': 3, 'state_dict': state_dict}, path)
    else:
        torch.save(state_dict, path)
    return path


@pytest.mark.parametrize('suffix', ['.pth', '.pth.tar', '.safetensors'])
def test_own_checkpoint_round_trip(tmp_path, suffix):
    model = timm.create_model('sgconvnext_atto')
    path = save_checkpoint(model.state_dict(), str(tmp_path / f'model{suffix}'))
    loaded = timm.create_model('sgconvnext_atto', pretrained=True, pretrained_cfg_overlay=dict(file=path))
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_warm_start_from_convnext_without_conversion(tmp_path, caplog, suffix):
    convnext = timm.create_model('convnext_atto')
    with torch.no_grad():
        for p in convnext.parameters():
            p.normal_()  # distinct from any init, so a tensor left at init cannot pass for a loaded one
    path = save_checkpoint(convnext.state_dict(), str(tmp_path / f'convnext_atto{suffix}'))
    torch.manual_seed(7)
    fresh = timm.create_model('sgconvnext_atto')
    torch.manual_seed(7)
    with caplog.at_level(logging.WARNING):
        model = timm.create_model('sgconvnext_atto', pretrained=True, pretrained_cfg_overlay=dict(file=path),
                                  sg_convert='none')
    source = convnext.state_dict()
    target = model.state_dict()
    shared = [k for k in source if k in target]
    assert len(shared) == len(source) - 12  # all but the twelve 7x7 kernels
    for k in shared:
        assert torch.equal(target[k], source[k]), k
    kept = [k for k in target if k not in source]
    assert kept and all('.conv_dw.kernel_' in k for k in kept)
    for k in kept:
        assert torch.equal(target[k], fresh.state_dict()[k]), k
    (report,) = [r.getMessage() for r in caplog.records if r.name.startswith('sgconvnext')]  # one short line
    assert 'dropped 12 7x7 kernels' in report and '12 layers keep their random init' in report
    assert 'stages.' not in report  # no tensor names one by one


def test_warm_start_into_another_head(tmp_path):
    convnext = timm.create_model('convnext_atto')
    path = save_checkpoint(convnext.state_dict(), str(tmp_path / 'c.pth'))
    model = timm.create_model('sgconvnext_atto', pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file=path))
    assert model.get_classifier().out_features == 10
    assert torch.equal(model.stem[0].weight, convnext.stem[0].weight)


def test_warm_start_from_a_different_size_fails_loudly(tmp_path):
    convnext = timm.create_model('convnext_atto')
    path = save_checkpoint(convnext.state_dict(), str(tmp_path / 'c.pth'))
    with pytest.raises(ValueError, match='another shape.*another model size'):
        timm.create_model('sgconvnext_femto', pretrained=True, pretrained_cfg_overlay=dict(file=path))
    with pytest.raises(ValueError, match='no place for'):  # the checkpoint has more blocks than the model
        timm.create_model('sgconvnext_atto', depths=(2, 2, 4, 2), pretrained=True, pretrained_cfg_overlay=dict(file=path))


@pytest.mark.parametrize('resize', ['stretch', 'fixed'])
@pytest.mark.parametrize('saved,built', [(224, 384), (240, 224), (224, 160), ((96, 64), (64, 96))])
def test_checkpoint_for_another_img_size_keeps_its_function(saved, built, resize, caplog):
    torch.manual_seed(0)
    source = timm.create_model('sgconvnext_atto', img_size=saved, sg_resize=resize).eval()
    state = source.state_dict()
    with caplog.at_level(logging.INFO, logger='sgconvnext'):
        model = timm.create_model('sgconvnext_atto', img_size=built, sg_resize=resize, pretrained=True,
                                  pretrained_cfg_overlay=dict(state_dict=state)).eval()
    assert [s.blocks[0].conv_dw.l_max for s in model.stages] == [s.blocks[0].conv_dw.l_max for s in source.stages]
    assert 'took the checkpoint\'s geometry' in caplog.text and f'{resize} policy' in caplog.text
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    for size in {saved, built, (100, 72)}:
        x = torch.randn(1, 3, *timm.layers.to_2tuple(size))
        with torch.no_grad():
            torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)


def test_geometry_entries_are_in_the_state_dict_and_survive_casts(tmp_path):
    model = timm.create_model('sgconvnext_atto', img_size=96)
    state = model.half().state_dict()
    geometry = {k: sgconvnext.kernel.unpack_geometry(v) for k, v in state.items() if k.endswith('.geometry')}
    assert len(geometry) == 2 * 12
    assert geometry['stages.0.blocks.0.conv_dw.kernel_h.geometry'] == (24, 8, 0.5)
    assert geometry['stages.3.blocks.1.conv_dw.kernel_w.geometry'] == (3, 8, 0.5)
    path = save_checkpoint(state, str(tmp_path / 'm.safetensors'))  # int64 entries go through safetensors too
    loaded = timm.create_model('sgconvnext_atto', img_size=224, pretrained=True, pretrained_cfg_overlay=dict(file=path))
    assert loaded.stages[0].blocks[0].conv_dw.l_max == (24, 24)


def test_load_state_dict_after_the_optimizer_keeps_the_parameters():
    # e.g. train_imagenet.py --resume: the optimizer exists before the weights are loaded
    source = timm.create_model('sgconvnext_atto', img_size=64)
    model = timm.create_model('sgconvnext_atto', img_size=128)
    optimizer = create_optimizer_v2(model, 'adamw', lr=1e-3)
    model.load_state_dict(source.state_dict())
    params = {id(p) for group in optimizer.param_groups for p in group['params']}
    assert params == {id(p) for p in model.parameters()}
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    optimizer.step()  # the resized kernels step like any parameter


def test_old_checkpoint_without_geometry_is_refused_and_can_be_upgraded():
    torch.manual_seed(0)
    source = timm.create_model('sgconvnext_atto', img_size=(240, 200), sg_decay=0.3).eval()
    old = {k: v for k, v in source.state_dict().items() if not k.endswith('.geometry')}
    for build in (dict(img_size=(240, 200)), dict(img_size=224)):
        with pytest.raises(ValueError, match='geometry is missing.*add_kernel_geometry'):
            timm.create_model('sgconvnext_atto', sg_decay=0.3, pretrained=True, pretrained_cfg_overlay=dict(state_dict=old),
                              **build)
        with pytest.raises(ValueError, match='geometry is missing'):
            timm.create_model('sgconvnext_atto', sg_decay=0.3, **build).load_state_dict(old)
    upgraded = sgconvnext.add_kernel_geometry(old, img_size=(240, 200), decay=0.3)
    assert upgraded.keys() == source.state_dict().keys()
    model = timm.create_model('sgconvnext_atto', pretrained=True, pretrained_cfg_overlay=dict(state_dict=upgraded)).eval()
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)


def test_unknown_resize_policy_is_refused():
    with pytest.raises(ValueError, match="'fixed', 'stretch'"):
        timm.create_model('sgconvnext_atto', sg_resize='nope')
    with pytest.raises(TypeError, match="'fixed', 'stretch'"):
        timm.create_model('sgconvnext_atto', sg_resize=3)


def test_partial_sgconvnext_checkpoint_is_refused():
    state = timm.create_model('sgconvnext_atto').state_dict()
    state = {k: v for k, v in state.items() if not k.endswith('.norm')}  # kernels without their norm buffers
    with pytest.raises(ValueError, match='missing from the checkpoint'):
        timm.create_model('sgconvnext_atto', pretrained=True, pretrained_cfg_overlay=dict(state_dict=state))


@pytest.mark.slow
def test_convnext_tiny_weights_into_sgconvnext_small_fail(tmp_path):
    state = timm.create_model('convnext_tiny').state_dict()
    with pytest.raises(ValueError, match='missing from the checkpoint'):
        timm.create_model('sgconvnext_small', pretrained=True, pretrained_cfg_overlay=dict(state_dict=state))


class _Exploit:
    def __reduce__(self):
        return (open, ('/tmp/sgconvnext_pwned', 'w'))


def test_loading_never_unpickles_code(tmp_path):
    path = tmp_path / 'evil.pth'
    with open(path, 'wb') as f:
        pickle.dump({'stem.0.weight': _Exploit()}, f)
    if os.path.exists('/tmp/sgconvnext_pwned'):
        os.remove('/tmp/sgconvnext_pwned')
    with pytest.raises(Exception, match='[Ww]eights only|weights_only|Unsupported'):
        timm.create_model('sgconvnext_atto', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    assert not os.path.exists('/tmp/sgconvnext_pwned')


def test_save_for_hf_config_round_trip(tmp_path):
    from timm.models import save_for_hf
    model = timm.create_model('sgconvnext_atto', num_classes=6, sg_kernel_dim=4, img_size=96).eval()
    save_for_hf(model, str(tmp_path), model_args=dict(sg_kernel_dim=4, img_size=96))
    rebuilt = timm.create_model(f'local-dir:{tmp_path}', pretrained=True).eval()
    assert isinstance(rebuilt, SGConvNeXt)
    assert rebuilt.stages[0].blocks[0].conv_dw.l_max == (24, 24)
    x = torch.randn(1, 3, 96, 96)
    torch.testing.assert_close(rebuilt(x), model(x))


def test_bad_img_size():
    with pytest.raises(ValueError, match='img_size'):
        timm.create_model('sgconvnext_atto', img_size=0)
    with pytest.raises(ValueError, match='backend'):
        timm.create_model('sgconvnext_atto', sg_backend='cudnn')
