"""sgconvnext/dense.py: a timm backbone with an FPN, as torchvision's detection models take it (the same code for
sgconvnext_* and convnext_*), trained a step for real at toy sizes."""
import pytest
import torch
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet

import sgconvnext  # noqa: F401
from sgconvnext.dense import fpn_backbone

NAMES = ('sgconvnext_atto', 'convnext_atto')  # the API and error tests
DETECTOR_NAMES = ('sgconvnext_tiny', 'convnext_tiny')  # the "done when": a step of each detector on tiny
SIZE = dict(min_size=64, max_size=96)
# Eval keeps every box (score threshold 0), ten per image: the post-processing runs on boxes, whatever four steps
# learned. 64 sampled RoIs per image (torchvision: 512) for the box and mask heads: the same losses and code, with
# two objects per image still every positive there is, at an eighth of the heads' cost (MaskRCNN's 256-channel mask
# head on 512 RoIs was most of its time).
HEADS = {FasterRCNN: dict(box_batch_size_per_image=64, box_score_thresh=0.0, box_detections_per_img=10),
         MaskRCNN: dict(box_batch_size_per_image=64, box_score_thresh=0.0, box_detections_per_img=10),
         RetinaNet: dict(score_thresh=0.0, detections_per_img=10)}


def kwargs(name):
    return {'img_size': 64} if name.startswith('sg') else {}


def batch(masks=False):
    torch.manual_seed(0)
    images = [torch.rand(3, 64, 80), torch.rand(3, 72, 64)]  # two sizes: torchvision pads them to one canvas
    targets = []
    for image in images:
        boxes = torch.tensor([[8.0, 10.0, 40.0, 44.0], [30.0, 20.0, 60.0, 60.0]])
        target = dict(boxes=boxes, labels=torch.tensor([1, 2]))
        if masks:
            m = torch.zeros(2, *image.shape[1:], dtype=torch.uint8)
            for k, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
                m[k, y0:y1, x0:x1] = 1
            target['masks'] = m
        targets.append(target)
    return images, targets


@pytest.mark.parametrize('name', NAMES)
def test_the_backbone_gives_torchvision_its_levels(name):
    backbone = fpn_backbone(name, out_channels=32, **kwargs(name))
    out = backbone(torch.randn(2, 3, 64, 96))
    assert list(out) == ['0', '1', '2', '3', 'pool'] and backbone.out_channels == 32
    assert [tuple(v.shape) for v in out.values()] == [(2, 32, 16, 24), (2, 32, 8, 12), (2, 32, 4, 6), (2, 32, 2, 3),
                                                       (2, 32, 1, 2)]


@pytest.mark.slow
@pytest.mark.usefixtures('one_thread')  # two threads on two cores another process uses ran 3-4x slower
@pytest.mark.parametrize('name', DETECTOR_NAMES)
@pytest.mark.parametrize('detector', (FasterRCNN, RetinaNet, MaskRCNN))
def test_a_detector_trains_on_it_and_returns_boxes(name, detector):
    torch.manual_seed(0)
    model = detector(fpn_backbone(name, out_channels=32, **kwargs(name)), num_classes=3, **SIZE, **HEADS[detector])
    images, targets = batch(masks=detector is MaskRCNN)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)  # ConvNeXt's detection recipe
    totals = []
    for _ in range(4):  # the same batch four times: the loss must go down
        losses = model.train()(images, targets)
        loss = sum(losses.values())
        assert all(torch.isfinite(v) for v in losses.values()), losses
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        totals.append(loss.item())
    assert totals[-1] < totals[0], totals
    with torch.no_grad():
        detections = model.eval()(images)
    assert len(detections) == 2
    for image, d in zip(images, detections):
        n = len(d['boxes'])
        assert n == 10 and d['boxes'].shape == (n, 4) and d['labels'].shape == d['scores'].shape == (n,), d
        height, width = image.shape[1:]  # boxes in the input image's pixels, inside it
        assert bool((d['boxes'] >= 0).all() and (d['boxes'][:, 2] <= width).all() and (d['boxes'][:, 3] <= height).all())
        if detector is MaskRCNN:
            assert d['masks'].shape == (n, 1, height, width)


def test_frozen_stages_take_no_gradient():
    backbone = fpn_backbone('sgconvnext_atto', out_channels=16, frozen_stages=2, img_size=64)
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(('body.stem', 'body.stages_0', 'body.stages_1')) for n in frozen)
    assert all(p.requires_grad for n, p in backbone.named_parameters() if n.startswith(('body.stages_2', 'fpn')))


@pytest.mark.parametrize('arguments,error,message', [
    (dict(out_indices=(0, 7)), ValueError, r'sgconvnext_atto has no feature levels \(0, 7\)'),
    (dict(out_indices=(1, 1)), ValueError, 'distinct levels'),
    (dict(out_indices='0123'), TypeError, 'sequence of ints'),
    (dict(frozen_stages=5), ValueError, 'frozen_stages of sgconvnext_atto with these out_indices must be 0..4'),
    (dict(frozen_stages=1.5), TypeError, 'frozen_stages must be an int'),
    (dict(out_channels=0), ValueError, 'out_channels must be a positive int'),
])
def test_bad_arguments_are_one_line_errors(arguments, error, message):
    with pytest.raises(error, match=message) as e:
        fpn_backbone('sgconvnext_atto', img_size=64, **arguments)
    assert '\n' not in str(e.value)
