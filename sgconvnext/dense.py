"""A timm backbone with a feature pyramid, as torchvision's detection models take it.

``fpn_backbone('sgconvnext_tiny')`` (or any ``convnext_*`` / timm model with ``features_only``) returns a module whose
forward maps images (B, 3, H, W) to an ``OrderedDict`` of FPN levels ``'0'``.. (strides 4, 8, 16, 32 for ConvNeXt)
plus ``'pool'`` (stride 64), each (B, out_channels, H / s, W / s), and which has ``out_channels``: the contract of
``torchvision.models.detection.FasterRCNN`` / ``RetinaNet`` / ``MaskRCNN``'s ``backbone`` argument.
"""
from collections import OrderedDict
from typing import Sequence

import timm
import torch
from torch import nn

__all__ = ['fpn_backbone', 'TimmFPNBackbone']


class TimmFPNBackbone(nn.Module):
    """``body`` (a timm ``features_only`` model) followed by torchvision's ``FeaturePyramidNetwork``.

    Shape: (B, 3, H, W) -> OrderedDict of (B, out_channels, H_i, W_i), one per level, then ``'pool'``.
    """

    def __init__(self, body: nn.Module, out_channels: int = 256, extra_pool: bool = True):
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
        self.body = body
        self.out_channels = out_channels
        self.fpn = FeaturePyramidNetwork(list(body.feature_info.channels()), out_channels,
                                         extra_blocks=LastLevelMaxPool() if extra_pool else None)

    def forward(self, x: torch.Tensor) -> 'OrderedDict[str, torch.Tensor]':
        features = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))


def _check_out_indices(out_indices: Sequence[int]) -> tuple:
    if isinstance(out_indices, (str, bytes)) or not all(isinstance(i, int) and not isinstance(i, bool)
                                                        for i in out_indices):
        raise TypeError(f'out_indices must be a sequence of ints, got {out_indices!r}')
    out_indices = tuple(out_indices)
    if not out_indices or len(set(out_indices)) != len(out_indices) or min(out_indices) < 0:
        raise ValueError(f'out_indices must be distinct levels >= 0, got {out_indices}')
    return out_indices


def _freeze(body: nn.Module, name: str, frozen_stages: int) -> None:
    """Stem and the first ``frozen_stages`` stages take no gradient (detectron2's ``freeze_at``)."""
    if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int):
        raise TypeError(f'frozen_stages must be an int, got {frozen_stages!r}')
    stages = [m for n, m in body.named_children() if n.startswith('stages')]
    if not 0 <= frozen_stages <= len(stages):
        raise ValueError(f'frozen_stages of {name} with these out_indices must be 0..{len(stages)} (0: train '
                         f'everything), got {frozen_stages}')
    if frozen_stages == 0:
        return
    for module in [m for n, m in body.named_children() if n.startswith('stem')] + stages[:frozen_stages]:
        for p in module.parameters():
            p.requires_grad_(False)


def fpn_backbone(name: str, out_channels: int = 256, out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = 0, checkpoint_path: str = '', extra_pool: bool = True,
                 **model_kwargs) -> TimmFPNBackbone:
    """A torchvision-ready backbone: timm model ``name`` with ``features_only`` at ``out_indices`` and an FPN.

    ``checkpoint_path`` loads weights as timm's ``pretrained_cfg_overlay=dict(file=...)`` does, so a ConvNeXt
    checkpoint into an ``sgconvnext_*`` name is converted on load (docs/models.md). ``frozen_stages``: the stem and
    that many stages take no gradient. ``model_kwargs`` reach ``timm.create_model`` (``drop_path_rate``,
    ``img_size``, ``sg_resize``, ...).
    """
    if not isinstance(name, str):
        raise TypeError(f'name must be a timm model name, got {name!r}')
    if isinstance(out_channels, bool) or not isinstance(out_channels, int) or out_channels < 1:
        raise ValueError(f'out_channels must be a positive int, got {out_channels!r}')
    out_indices = _check_out_indices(out_indices)
    if checkpoint_path:
        model_kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=checkpoint_path))
    try:
        body = timm.create_model(name, features_only=True, out_indices=out_indices, **model_kwargs)
    except (AssertionError, IndexError) as e:  # timm's checks of out_indices
        raise ValueError(f'{name} has no feature levels {out_indices} ({" ".join(str(e).split())[:160] or "out of range"})'
                         ) from None
    except RuntimeError as e:
        if 'feature' not in str(e):
            raise
        raise ValueError(f'{name} cannot be built with features_only=True: {" ".join(str(e).split())[:200]}') from None
    _freeze(body, name, frozen_stages)
    return TimmFPNBackbone(body, out_channels, extra_pool)
