"""A timm backbone with a feature pyramid, as torchvision's detection models take it.

``fpn_backbone('sgconvnext_tiny')`` (or any ``convnext_*`` / timm model with ``features_only``) returns a module whose
forward maps images (B, 3, H, W) to an ``OrderedDict`` of FPN levels ``'0'``.. (strides 4, 8, 16, 32 for ConvNeXt)
plus ``'pool'`` (stride 64), each (B, out_channels, H / s, W / s), and which has ``out_channels``: the contract of
``torchvision.models.detection.FasterRCNN`` / ``RetinaNet`` / ``MaskRCNN``'s ``backbone`` argument.

The dense size policy (docs/dense.md). torchvision zero-pads every batch to its largest image, so the canvas
changes from batch to batch and an image's neighbours decide how much padding it gets. Two things keep an image's
features a function of that image alone:

* ``canvas``: an ``sgconvnext_*`` body is built for that input size with ``sg_resize="fixed"``: every kernel keeps
  its pixel offsets (the same taps on every canvas) and reaches across every canvas up to ``canvas``. A checkpoint
  built for 224 px loads with ``sg_load="extend"``: its kernels, exactly, plus zero far-field scales to learn.
* ``pad_mask``: the padding (the zero rows and columns past each image's extent) is set to zero again at the input
  of every token mixer, so what the blocks write there never reaches the image (for ``convnext_*`` too).
"""
from collections import OrderedDict
from typing import Dict, Optional, Sequence, Tuple, Union

import timm
import torch
from torch import nn

__all__ = ['fpn_backbone', 'TimmFPNBackbone', 'DENSE_CANVAS']

DENSE_CANVAS = 1344  # torchvision's default max_size, 1333, rounded up to its size_divisible of 32


class TimmFPNBackbone(nn.Module):
    """``body`` (a timm ``features_only`` model) followed by torchvision's ``FeaturePyramidNetwork``.

    Shape: (B, 3, H, W) -> OrderedDict of (B, out_channels, H_i, W_i), one per level, then ``'pool'``.

    ``pad_mask``: each image's extent is where its rows and columns stop being all zero (torchvision's batch
    padding is exact zeros after normalization, which no 8-bit pixel is); every block's ``conv_dw`` input is zeroed
    past it, scaled to the map (module docstring).
    """

    def __init__(self, body: nn.Module, out_channels: int = 256, extra_pool: bool = True, pad_mask: bool = True):
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
        self.body = body
        self.out_channels = out_channels
        self.fpn = FeaturePyramidNetwork(list(body.feature_info.channels()), out_channels,
                                         extra_blocks=LastLevelMaxPool() if extra_pool else None)
        self.pad_mask = pad_mask
        # The last batch's extent and masks ((h, w) -> (B, 1, h, w)), kept after forward: checkpointed blocks
        # (set_grad_checkpointing) run again in backward and must mask alike. A direct call of body drops them.
        # So with checkpointing, run each batch's backward before the next forward (as a training step does);
        # two forwards then one backward would recompute the first batch with the second's masks.
        self._extent: Optional[Tuple[torch.Tensor, torch.Tensor, int, int]] = None
        self._masks: Dict[Tuple[int, int], torch.Tensor] = {}
        self._in_forward = False
        mixers = [m.conv_dw for m in body.modules() if hasattr(m, 'conv_dw')]
        if pad_mask and not mixers:
            raise ValueError(f'pad_mask=True masks the input of every block\'s conv_dw; {type(body).__name__} has '
                             f'none (pass pad_mask=False)')
        for mixer in mixers:
            mixer.register_forward_pre_hook(self._mask_padding)
        body.register_forward_pre_hook(self._forget_unless_ours)

    def forward(self, x: torch.Tensor) -> 'OrderedDict[str, torch.Tensor]':
        self._extent, self._masks = (image_extent(x) if self.pad_mask else None), {}
        self._in_forward = True
        try:
            features = self.body(x)
        finally:
            self._in_forward = False
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))

    def _forget_unless_ours(self, module: nn.Module, args):
        if not self._in_forward:  # body called on its own: no padding is known for its input
            self._extent, self._masks = None, {}

    def _mask_padding(self, module: nn.Module, args):
        if self._extent is None:
            return None
        x = args[0]
        h, w = x.shape[-2:]
        mask = self._masks.get((h, w))
        if mask is None:  # once per map size and batch: every block of a stage has the same
            rows, cols, height, width = self._extent
            keep_rows = torch.arange(h, device=x.device) < torch.ceil(rows * (h / height)).unsqueeze(1)  # (B, h)
            keep_cols = torch.arange(w, device=x.device) < torch.ceil(cols * (w / width)).unsqueeze(1)  # (B, w)
            mask = self._masks[(h, w)] = keep_rows[:, None, :, None] & keep_cols[:, None, None, :]
        return (x * mask.to(x.dtype),) + tuple(args[1:])


def image_extent(x: torch.Tensor) -> Optional[Tuple[torch.Tensor, torch.Tensor, int, int]]:
    """(rows, cols, H, W): per image (B,) the rows and columns up to its last nonzero one; None when none is padded."""
    nonzero = x.detach().ne(0).any(1)  # (B, H, W)
    height, width = nonzero.shape[-2:]
    rows = (nonzero.any(2) * torch.arange(1, height + 1, device=x.device)).amax(1)
    cols = (nonzero.any(1) * torch.arange(1, width + 1, device=x.device)).amax(1)
    if bool((rows == height).all() and (cols == width).all()):
        return None
    return rows.to(torch.float64), cols.to(torch.float64), height, width


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


def _dense_defaults(name: str, canvas, model_kwargs: dict) -> None:
    """For an ``sgconvnext_*`` name: build for ``canvas`` with fixed-offset kernels, extend smaller checkpoints."""
    from .model import SGConvNeXt
    if not timm.is_model(name):
        raise ValueError(f'{name!r} is not a timm model name (import sgconvnext registers the sgconvnext_* ones)')
    if getattr(timm.models.model_entrypoint(name), '__module__', '') != SGConvNeXt.__module__:
        return
    canvas = (canvas, canvas) if isinstance(canvas, int) and not isinstance(canvas, bool) else tuple(canvas)
    if len(canvas) != 2 or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in canvas):
        raise ValueError(f'canvas must be a positive int or an (H, W) pair of them, got {canvas!r}')
    model_kwargs.setdefault('img_size', canvas)
    model_kwargs.setdefault('sg_resize', 'fixed')
    if model_kwargs['sg_resize'] == 'fixed':
        model_kwargs.setdefault('sg_load', 'extend')


def fpn_backbone(name: str, out_channels: int = 256, out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = 0, checkpoint_path: str = '', extra_pool: bool = True,
                 canvas: Union[int, Tuple[int, int]] = DENSE_CANVAS, pad_mask: bool = True,
                 **model_kwargs) -> TimmFPNBackbone:
    """A torchvision-ready backbone: timm model ``name`` with ``features_only`` at ``out_indices`` and an FPN.

    ``checkpoint_path`` loads weights as timm's ``pretrained_cfg_overlay=dict(file=...)`` does, so a ConvNeXt
    checkpoint into an ``sgconvnext_*`` name is converted on load (docs/models.md), and an SGConvNeXt one built for
    smaller images is extended to ``canvas``. ``frozen_stages``: the stem and that many stages take no gradient.
    ``canvas`` (an int or (H, W)) and ``pad_mask``: the dense size policy (module docstring); an explicit
    ``img_size`` / ``sg_resize`` / ``sg_load`` in ``model_kwargs`` wins. ``model_kwargs`` reach
    ``timm.create_model`` (``drop_path_rate``, ...).
    """
    if not isinstance(name, str):
        raise TypeError(f'name must be a timm model name, got {name!r}')
    if isinstance(out_channels, bool) or not isinstance(out_channels, int) or out_channels < 1:
        raise ValueError(f'out_channels must be a positive int, got {out_channels!r}')
    if not isinstance(pad_mask, bool):
        raise TypeError(f'pad_mask must be True or False, got {pad_mask!r}')
    out_indices = _check_out_indices(out_indices)
    _dense_defaults(name, canvas, model_kwargs)
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
    return TimmFPNBackbone(body, out_channels, extra_pool, pad_mask)
