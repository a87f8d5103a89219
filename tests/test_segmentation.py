"""segmentation_models_pytorch's timm universal encoder (``encoder_name='tu-' + name``) on sgconvnext_* and
convnext_*: the same code builds a Unet and an FPN, trains two steps, and the gradient reaches every encoder
parameter (the SGConv kernels included). smp passes its extra keyword arguments on to ``timm.create_model``, so
``img_size`` / ``sg_resize`` reach an sgconvnext encoder."""
import pytest
import torch
import torch.nn.functional as F

import sgconvnext  # noqa: F401  (registers the sgconvnext_* names with timm, which smp's tu- encoders look up)

smp = pytest.importorskip('segmentation_models_pytorch')

NAMES = ('sgconvnext_tiny', 'convnext_tiny')
CLASSES = 3

pytestmark = pytest.mark.usefixtures('one_thread')  # two threads on two cores another process uses ran 3-4x slower


def kwargs(name):
    return {'img_size': 64} if name.startswith('sg') else {}  # the kernels sized for the training crop


@pytest.mark.slow
@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('architecture', ('Unet', 'FPN'))
def test_a_segmentation_model_trains_on_the_encoder(name, architecture):
    torch.manual_seed(0)
    model = getattr(smp, architecture)(encoder_name='tu-' + name, encoder_weights=None, classes=CLASSES,
                                       **kwargs(name))
    images, masks = torch.rand(2, 3, 64, 64), torch.randint(0, CLASSES, (2, 64, 64))
    encoder = dict(model.encoder.named_parameters())
    mixers = {n: p for n, p in encoder.items() if '.conv_dw.' in n and n.endswith('weight')}
    if name.startswith('sg'):  # the token mixers are SGConv2d: two learned 1-D kernels per block, no 7x7 weight
        assert mixers and all(n.endswith(('kernel_h.weight', 'kernel_w.weight')) for n in mixers), sorted(mixers)
    before = {n: p.detach().clone() for n, p in encoder.items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for step in range(2):
        out = model.train()(images)
        assert out.shape == (2, CLASSES, 64, 64)
        loss = F.cross_entropy(out, masks)
        assert torch.isfinite(loss), loss
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            no_gradient = [n for n, p in encoder.items() if p.grad is None or not p.grad.abs().sum() > 0]
            assert not no_gradient, no_gradient
        optimizer.step()
    unmoved = [n for n, p in encoder.items() if torch.equal(p.detach(), before[n])]
    assert not unmoved, unmoved
    with torch.no_grad():
        assert model.eval()(images).shape == (2, CLASSES, 64, 64)


def test_smp_passes_model_keywords_on_to_the_encoder():
    """``smp.Unet(..., **kwargs)`` -> ``get_encoder`` -> ``TimmUniversalEncoder`` -> ``timm.create_model``."""
    model = smp.Unet('tu-sgconvnext_atto', encoder_weights=None, classes=CLASSES, img_size=(64, 96),
                     sg_resize='fixed', drop_path_rate=0.1)
    body = model.encoder.model  # timm's features_only wrapper
    conv = body.stages_0.blocks[0].conv_dw  # stride 4: built for a 16 x 24 map
    assert (conv.kernel_h.l_max, conv.kernel_w.l_max, conv.kernel_h.resize) == (16, 24, 'fixed')
    assert body.stages_3.blocks[1].drop_path.drop_prob == pytest.approx(0.1)
    assert model.eval()(torch.rand(1, 3, 64, 96)).shape == (1, CLASSES, 64, 96)


def test_a_convnext_checkpoint_warm_starts_the_encoder_through_smp(tmp_path):
    """``encoder_weights=True`` is timm's ``pretrained=True``; the file comes with ``pretrained_cfg_overlay``."""
    import timm
    source = timm.create_model('convnext_atto')
    torch.save(source.state_dict(), tmp_path / 'convnext_atto.pth')
    build = dict(encoder_name='tu-sgconvnext_atto', classes=CLASSES, img_size=64)
    torch.manual_seed(0)
    fresh = smp.Unet(encoder_weights=None, **build).encoder.model
    torch.manual_seed(0)
    body = smp.Unet(encoder_weights=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'convnext_atto.pth')),
                    **build).encoder.model
    assert torch.equal(body.stem_0.weight, source.stem[0].weight)
    assert torch.equal(body.stages_2.blocks[3].mlp.fc1.weight, source.stages[2].blocks[3].mlp.fc1.weight)
    kernel = 'stages_1.blocks.0.conv_dw.kernel_h.weight'  # converted from the 7x7 kernel, not the init
    assert not torch.equal(body.get_parameter(kernel), fresh.get_parameter(kernel))


@pytest.mark.parametrize('arguments,error,message', [
    (dict(encoder_name='tu-sgconvnext_tinyy'), RuntimeError, r'Unknown model \(sgconvnext_tinyy\)'),  # timm's
    (dict(encoder_name='tu-sgconvnext_atto', img_size=0), ValueError, 'img_size must be a positive int'),  # ours
    (dict(encoder_name='tu-sgconvnext_atto', sg_backend='nope'), ValueError, 'backend must be one of'),  # ours
    (dict(encoder_name='tu-sgconvnext_atto', encoder_weights=True), ValueError, 'No ImageNet weights exist'),  # ours
])
def test_bad_names_and_arguments_are_one_line_errors(arguments, error, message):
    with pytest.raises(error, match=message) as e:
        smp.Unet(**{'encoder_weights': None, **arguments})
    assert '\n' not in str(e.value)
