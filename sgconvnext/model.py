"""SGConvNeXt: timm's ConvNeXt with every 7x7 depthwise conv replaced by a global SGConv2d.

Everything but the token mixer (stem, downsampling, norms, MLPs, layer scale, drop path, head,
feature_info, forward_intermediates, grad checkpointing) is timm's ConvNeXt, inherited unchanged.
Each block's ``conv_dw`` becomes an ``SGConv2d`` whose kernels are built for its stage's map at
``img_size`` (``img_size // reduction``). The model runs at any input size: kernels are regenerated
for each map size by the ``sg_resize`` policy (``sgconvnext/resize.py``): ``"stretch"`` resamples them to
span every map, ``"fixed"`` keeps each tap's pixel offset (zero past the built size).

Checkpoints carry each kernel's geometry (``...conv_dw.kernel_{h,w}.geometry``): a model built for another
``img_size`` takes the checkpoint's geometry on load and computes exactly what the saved model did, at every
input size (``kernel.py``); the load logs it.

Warm start: ``pretrained=True, pretrained_cfg_overlay=dict(file=...)`` with a timm (or original
facebookresearch) ``convnext_*`` checkpoint of the same size loads every shared tensor and, with
``sg_convert="rank1"`` (default), converts each 7x7 kernel into its SGConv2d (``convert.py``); with
``sg_convert="none"`` the SGConv kernels keep their init. ``load_state_dict`` (timm's ``checkpoint_path``,
train_imagenet.py's ``--initial-checkpoint``) takes SGConvNeXt state dicts only and names the way to load a
ConvNeXt one.
"""
import logging
import re
from collections import Counter
from typing import Dict, Set, Tuple, Union

import torch
from torch import nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import register_notrace_module, to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models import resolve_pretrained_cfg
from timm.models.convnext import ConvNeXt

from .convert import (DEFAULT_CONVERT, check_convert, convert_timm_layout, convnext_layout_of, fit_problems,
                      is_convnext_state_dict, keep_model_head, size_hint, to_timm_layout)
from .kernel import SGKernel1d, check_load_mode, missing_geometry_error, pack_geometry
from .resize import DEFAULT_RESIZE
from .sgconv import SGConv2d

__all__ = ['SGConvNeXt', 'checkpoint_filter_fn', 'add_kernel_geometry']

_logger = logging.getLogger(__name__)

# The layer's forward branches on the map size, which fx cannot trace: keep it a leaf module.
register_notrace_module(SGConv2d)


class SGConvNeXt(ConvNeXt):
    """ConvNeXt with a global separable multi-scale SGConv token mixer.

    Args (besides timm ConvNeXt's, all passed through):
        img_size: input size (int or (H, W)) the stage kernels are sized for.
        sg_kernel_dim: learned values per sub-kernel.
        sg_decay: weight of sub-kernel i is ``sg_decay**i``.
        sg_backend: ``"auto"``, ``"fft"``, ``"matmul"`` or ``"direct"`` for every SGConv2d.
        sg_resize: ``"stretch"`` or ``"fixed"``, how kernels meet maps of another size (``resize.py``).
        sg_convert: ``"rank1"`` or ``"none"``, what loading a ConvNeXt checkpoint does with its 7x7 kernels
            (``convert.py``): convert each into this model's SGConv2d, or drop it and keep the init.
        sg_load: ``"saved"`` or ``"extend"``, what loading an SGConvNeXt checkpoint built for smaller maps does
            (``kernel.py``): take its geometry, or (with ``sg_resize="fixed"``; the dense default, ``dense.py``) keep
            this model's and extend the saved kernels with zero far-field scales.
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            sg_kernel_dim: int = 8,
            sg_decay: float = 0.5,
            sg_backend: str = 'auto',
            sg_resize: str = DEFAULT_RESIZE,
            sg_convert: str = DEFAULT_CONVERT,
            sg_load: str = 'saved',
            **kwargs,
    ):
        self.sg_convert = check_convert(sg_convert)
        if check_load_mode(sg_load) == 'extend' and sg_resize != 'fixed':
            raise ValueError(f'sg_load="extend" keeps pixel offsets, so it needs sg_resize="fixed", got '
                             f'sg_resize={sg_resize!r}')
        super().__init__(**kwargs)
        img_size = to_2tuple(img_size)
        if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in img_size):
            raise ValueError(f'img_size must be a positive int or an (H, W) pair of them, got {img_size!r}')
        self.img_size = tuple(img_size)
        for stage, info in zip(self.stages, self.feature_info):
            reduction = info['reduction']
            stage_size = (max(1, img_size[0] // reduction), max(1, img_size[1] // reduction))  # stem, downsamplers floor
            for block in stage.blocks:
                conv = block.conv_dw
                block.conv_dw = SGConv2d(
                    conv.in_channels,
                    stage_size,
                    kernel_dim=sg_kernel_dim,
                    decay=sg_decay,
                    backend=sg_backend,
                    bias=conv.bias is not None,
                    resize=sg_resize,
                    device=conv.weight.device,
                    dtype=conv.weight.dtype,
                )
                block.conv_dw.kernel_h.load_mode = block.conv_dw.kernel_w.load_mode = sg_load
        self.register_load_state_dict_post_hook(_log_geometry_changes)

    def load_state_dict(self, state_dict, strict: bool = True, *args, **kwargs):
        """``nn.Module.load_state_dict``; a strict load of a ConvNeXt state dict is a ValueError that names the
        loads that convert it (``strict=False`` loads the tensors the two share, as asked)."""
        if strict:  # torch hands load hooks strict=True whatever was asked, so the check lives here
            _refuse_convnext_state_dict(self, state_dict)
        return super().load_state_dict(state_dict, strict, *args, **kwargs)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """Full names of the SGConv kernel parameters (timm's optimizer factory skips these)."""
        return {
            f'{name}.{param_name}'
            for name, module in self.named_modules() if isinstance(module, SGConv2d)
            for param_name in module.no_weight_decay()
        }


def _refuse_convnext_state_dict(model, state_dict) -> None:
    """A ConvNeXt state dict would fail a strict load with a list of missing SGConv kernels: say what loads it."""
    layout = convnext_layout_of(state_dict)
    if layout is None:
        return
    name = getattr(model, 'pretrained_cfg', {}).get('architecture', 'sgconvnext_*')
    raise ValueError(
        f'this is a ConvNeXt state dict ({layout} layout: 7x7 conv_dw kernels, no SGConv kernels), which '
        f'load_state_dict does not convert: load it as pretrained weights, timm.create_model(\'{name}\', '
        f'pretrained=True, pretrained_cfg_overlay=dict(file=PATH)) (train_imagenet.py: --pretrained --pretrained-path '
        f'PATH, not --initial-checkpoint), or convert it first with sgconvnext.convert_convnext(state_dict, model) '
        f'or tools/convert_convnext.py')


def _log_geometry_changes(model: nn.Module, incompatible_keys) -> None:
    """After a load: one log line for the kernels that took their checkpoint's geometry or extended it (kernel.py)."""
    changes, policies = Counter(), set()
    for module in model.modules():
        if isinstance(module, SGKernel1d) and module.geometry_change is not None:
            changes[module.geometry_change] += 1
            policies.add(module.resize)
            module.geometry_change = None
    took = {(saved, built): n for (how, saved, built), n in changes.items() if how == 'took'}
    extended = {(saved, built): n for (how, saved, built), n in changes.items() if how == 'extended'}
    if took:
        pairs = ', '.join(f'{n} x {built} -> {saved}' for (saved, built), n in sorted(took.items(), reverse=True))
        _logger.info(f'Loaded SGConv kernels built for other map sizes: {sum(took.values())} axis kernels took '
                     f'the checkpoint\'s geometry (l_max, kernel_dim, decay) [{pairs}], so they compute what they '
                     f'did when saved; at other map sizes they follow the {"/".join(sorted(policies))} policy.')
    if extended:
        pairs = ', '.join(f'{n} x {saved} -> {built}' for (saved, built), n in sorted(extended.items(), reverse=True))
        _logger.info(f'Loaded SGConv kernels built for smaller maps: {sum(extended.values())} axis kernels kept this '
                     f'model\'s geometry (l_max, kernel_dim, decay) [{pairs}] and took the checkpoint\'s sub-kernels '
                     f'(sg_load="extend"): the same taps up to the saved l_max, zero far-field scales.')


def add_kernel_geometry(state_dict: Dict[str, torch.Tensor], img_size: Union[int, Tuple[int, int]] = 224,
                        decay: float = 0.5) -> Dict[str, torch.Tensor]:
    """A copy of an sgconvnext state dict saved before kernels recorded their geometry, with the geometry added.

    ``img_size`` and ``decay`` must be what the model was built with (its ``img_size`` and ``sg_decay``); the
    stage of each kernel gives its map (``img_size // (4 * 2**stage)``), the weight's shape its kernel_dim.
    """
    img_size = to_2tuple(img_size)
    out = dict(state_dict)
    for key, weight in state_dict.items():
        match = re.search(r'(?:^|\.)stages[._](\d+)\..*\.conv_dw\.kernel_([hw])\.weight$', key)
        if match is None:
            continue
        stage, axis = int(match.group(1)), match.group(2)
        l_max = max(1, img_size[0 if axis == 'h' else 1] // (4 * 2 ** stage))
        out.setdefault(key[:-len('weight')] + 'geometry', pack_geometry(l_max, weight.shape[-1], decay))
    return out


def checkpoint_filter_fn(state_dict, model: SGConvNeXt):
    """Map an sgconvnext or convnext_* checkpoint onto ``model``; check it fits.

    * sgconvnext checkpoints pass through; their kernels bring their own geometry (their shapes may differ
      from the model's when it was built for another ``img_size``), and without it they are refused.
    * ConvNeXt checkpoints (timm or facebookresearch layout) of the same size load every tensor the two share;
      their 7x7 kernels are converted or dropped as ``model.sg_convert`` says (``convert.convert_convnext``).
    * A classifier of another shape (an in-22k head into a 1000-class model) is not loaded: the model's head
      keeps its init, and a warning says so.
    * A tensor of the wrong shape, a model tensor the checkpoint lacks or a checkpoint tensor the model has no
      place for raises ValueError: the checkpoint is for another size.
    """
    try:
        return _filter(state_dict, model)
    except TypeError as e:  # timm's load_pretrained would retry filter_fn(state_dict) and report that call instead
        raise ValueError(str(e)) from None


def _filter(state_dict, model: SGConvNeXt):
    state_dict = to_timm_layout(state_dict, model)  # facebookresearch names -> timm's; timm's pass through
    if is_convnext_state_dict(state_dict):
        method = getattr(model, 'sg_convert', DEFAULT_CONVERT)
        return convert_timm_layout(state_dict, model, method, pretrained_load=True)
    model_state = model.state_dict()
    for key in state_dict:
        if '.conv_dw.kernel_' in key and key.endswith('.weight') and key[:-len('weight')] + 'geometry' not in state_dict:
            raise missing_geometry_error(key[:-len('weight')] + 'geometry')
    classifier = model.pretrained_cfg.get('classifier', 'head.fc') if hasattr(model, 'pretrained_cfg') else 'head.fc'
    resized = [k for k in state_dict if '.conv_dw.kernel_' in k and k.endswith('.weight')]  # shape = the geometry's
    # A partial sgconvnext checkpoint (say, weights without their norm buffers) would silently rescale the
    # kernels: every model tensor must be there.
    problems = fit_problems(state_dict, model_state, classifier, shape_free=resized)
    if problems:
        raise ValueError('checkpoint does not fit this model: ' + '; '.join(problems) + '. '
                         + size_hint(state_dict, model))
    state_dict, head = keep_model_head(state_dict, model, classifier, pretrained_load=True)
    if head:
        _logger.warning(f'Loaded an SGConvNeXt checkpoint: {head}.')
    return state_dict


def _has_weight_source(cfg) -> bool:
    cfg = cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg or {})
    return any(cfg.get(key) for key in ('state_dict', 'file', 'url', 'hf_hub_id')) or cfg.get('source') == 'local-dir'


def _create_sgconvnext(variant: str, pretrained: bool = False, **kwargs) -> SGConvNeXt:
    if pretrained:
        cfg = resolve_pretrained_cfg(
            variant,
            pretrained_cfg=kwargs.get('pretrained_cfg'),
            pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'),
        )
        if not _has_weight_source(cfg):
            raise ValueError(
                f'No ImageNet weights exist for {variant} yet. Pass pretrained_cfg_overlay=dict(file=PATH) with a '
                f'local .pth/.pth.tar/.safetensors checkpoint (an {variant} one, or a same-size convnext_* one '
                f'for a warm start), or use pretrained=False.')
    return build_model_with_cfg(
        SGConvNeXt, variant, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        **kwargs)


def _cfg(**kwargs):
    return {
        'url': '',
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bicubic',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.0', 'classifier': 'head.fc',
        'license': 'apache-2.0', **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'sgconvnext_atto': _cfg(),
    'sgconvnext_femto': _cfg(),
    'sgconvnext_pico': _cfg(),
    'sgconvnext_nano': _cfg(),
    'sgconvnext_tiny': _cfg(),
    'sgconvnext_small': _cfg(),
    'sgconvnext_base': _cfg(),
    'sgconvnext_large': _cfg(),
})


@register_model
def sgconvnext_atto(pretrained=False, **kwargs) -> SGConvNeXt:
    model_args = dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320), conv_mlp=True)
    return _create_sgconvnext('sgconvnext_atto', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def sgconvnext_femto(pretrained=False, **kwargs) -> SGConvNeXt:
    model_args = dict(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384), conv_mlp=True)
    return _create_sgconvnext('sgconvnext_femto', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def sgconvnext_pico(pretrained=False, **kwargs) -> SGConvNeXt:
    model_args = dict(depths=(2, 2, 6, 2), dims=(64, 128, 256, 512), conv_mlp=True)
    return _create_sgconvnext('sgconvnext_pico', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def sgconvnext_nano(pretrained=False, **kwargs) -> SGConvNeXt:
    model_args = dict(depths=(2, 2, 8, 2), dims=(80, 160, 320, 640), conv_mlp=True)
    return _create_sgconvnext('sgconvnext_nano', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def sgconvnext_tiny(pretrained=False, **kwargs) -> SGConvNeXt:
    model_args = dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768))
    return _create_sgconvnext('sgconvnext_tiny', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def sgconvnext_small(pretrained=False, **kwargs) -> SGConvNeXt:
    model_args = dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768))
    return _create_sgconvnext('sgconvnext_small', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def sgconvnext_base(pretrained=False, **kwargs) -> SGConvNeXt:
    model_args = dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024))
    return _create_sgconvnext('sgconvnext_base', pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def sgconvnext_large(pretrained=False, **kwargs) -> SGConvNeXt:
    model_args = dict(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536))
    return _create_sgconvnext('sgconvnext_large', pretrained=pretrained, **dict(model_args, **kwargs))
