"""The dense size policy (sgconvnext/dense.py): an image's backbone features do not depend on how far its batch is
padded, the kernels reach across the whole canvas, and a checkpoint built for small images loads exactly."""
import os
import sys

import pytest
import timm
import torch

import sgconvnext  # noqa: F401
from sgconvnext.dense import fpn_backbone
from sgconvnext.sgconv import SGConv2d

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools'))
from probe_padding import region_gaps, trained_like  # noqa: E402  (random biases: what trained weights write)

OWN, CANVAS = (96, 128), (160, 224)  # an image alone (its canvas is its size rounded to 32), and padded by batchmates


def region_gap(backbone):
    """Largest difference of the body's features over the image's own canvas, alone vs padded, relative to their scale."""
    torch.manual_seed(0)
    image = torch.randn(1, 3, *OWN)
    padded = torch.zeros(1, 3, *CANVAS)
    padded[..., :OWN[0], :OWN[1]] = image
    gaps = region_gaps(backbone, image, padded)
    return max(gaps)


@pytest.mark.parametrize('name', ['sgconvnext_atto', 'convnext_atto'])
def test_features_do_not_depend_on_the_batch_padding_under_the_dense_default(name):
    assert region_gap(trained_like(fpn_backbone(name, out_channels=16))) < 1e-5


@pytest.mark.parametrize('name,kwargs', [('sgconvnext_atto', dict(pad_mask=False)),
                                         ('sgconvnext_atto', dict(img_size=224, sg_resize='stretch', sg_load='saved')),
                                         ('convnext_atto', dict(pad_mask=False))])
def test_without_the_policy_the_padding_leaks_into_the_image(name, kwargs):
    # the control: without the mask the blocks' output in the padding reaches the image (through 7x7 kernels too);
    # under stretch the kernels are resampled to the canvas, so its size alone changes every tap
    assert region_gap(trained_like(fpn_backbone(name, out_channels=16, **kwargs))) > 1e-3


def test_the_dense_default_reaches_across_the_whole_canvas():
    backbone = fpn_backbone('sgconvnext_atto', out_channels=16, canvas=(320, 640))
    mixers = [m for m in backbone.modules() if isinstance(m, SGConv2d)]
    assert mixers and all(m.resize == 'fixed' for m in mixers)
    for m in mixers:
        stride = 320 // m.l_max[0]
        kh, kw = m.axis_kernels(320 // stride, 640 // stride)  # the largest map the canvas gives this stage
        assert kh[:, 0].abs().amax() > 0 and kh[:, -1].abs().amax() > 0  # taps at offsets +-(H_map - 1)
        assert kw[:, 0].abs().amax() > 0 and kw[:, -1].abs().amax() > 0


@pytest.mark.slow
def test_a_checkpoint_built_for_small_images_extends_exactly(tmp_path):
    small = trained_like(timm.create_model('sgconvnext_atto', img_size=64))  # a classifier trained at 64 px
    torch.save(small.state_dict(), tmp_path / 'small.pth')
    backbone = fpn_backbone('sgconvnext_atto', out_channels=16, canvas=256, checkpoint_path=str(tmp_path / 'small.pth'))
    kernels = [m for m in backbone.modules() if isinstance(m, SGConv2d)]
    assert kernels[0].l_max == (64, 64)  # built for the 256 canvas, not the checkpoint's 16
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(small.forward_intermediates(image, intermediates_only=True), backbone.eval().body(image)):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_bad_dense_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match='canvas must be a positive int'):
        fpn_backbone('sgconvnext_atto', canvas=0)
    with pytest.raises(ValueError, match="'nope' is not a timm model name"):
        fpn_backbone('nope')
    with pytest.raises(TypeError, match='pad_mask must be True or False'):
        fpn_backbone('sgconvnext_atto', pad_mask='yes')
    with pytest.raises(ValueError, match='sg_load="extend" keeps pixel offsets'):
        fpn_backbone('sgconvnext_atto', sg_resize='stretch', sg_load='extend')


@pytest.mark.parametrize('name', ['sgconvnext_atto', 'convnext_atto'])
def test_the_mask_holds_under_grad_checkpointing(name):
    """Checkpointed blocks run again in backward; they must mask the padding alike: the same loss and gradients."""
    torch.manual_seed(0)
    backbone = trained_like(fpn_backbone(name, out_channels=8, canvas=128)).train()
    padded = torch.zeros(1, 3, 96, 128)
    padded[..., :64, :96] = torch.randn(1, 3, 64, 96)
    grads = []
    for checkpointing in (False, True):
        backbone.body.set_grad_checkpointing(checkpointing)
        backbone.zero_grad()
        loss = sum(f.square().mean() for f in backbone(padded).values())
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None}))
    (plain_loss, plain), (ckpt_loss, ckpt) = grads
    torch.testing.assert_close(ckpt_loss, plain_loss, rtol=1e-6, atol=0)
    assert plain.keys() == ckpt.keys() and len(plain) > 10
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], rtol=1e-4, atol=1e-6, msg=n)


def test_calling_the_body_alone_drops_the_last_batch_mask():
    backbone = fpn_backbone('convnext_atto', out_channels=8).eval()
    padded = torch.zeros(1, 3, 64, 64)
    padded[..., :32, :32] = 1.0
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        backbone(padded)
        alone = backbone.body(image)  # no padding to mask: the plain model's features
        backbone.pad_mask = False
        plain = backbone.body(image)
    for a, b in zip(alone, plain):
        torch.testing.assert_close(a, b)
