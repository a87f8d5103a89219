"""ConvNeXt weights into an SGConvNeXt: every shared tensor loads, each block's 7x7 kernel becomes its SGConv2d.

``convert_convnext(state_dict, model)`` maps a ConvNeXt state dict (timm's or facebookresearch's layout) of the
model's size onto an SGConvNeXt and returns a state dict that ``model.load_state_dict`` takes whole: kernels,
``norm`` and ``geometry`` included. ``timm.create_model(..., sg_convert=...)`` chooses what happens to the 7x7
depthwise kernels when such a checkpoint is loaded as pretrained weights:

* ``"rank1"`` (default): the best separable approximation. ConvNeXt applies its kernel ``W[c]`` by correlation
  (``F.conv2d``); as a convolution kernel it is ``K = W.flip(-1, -2)``, offsets -3..3 on each axis. Its SVD
  ``K = sum_k s_k u_k v_k^T`` gives ``kh = sqrt(s_1) u_1`` and ``kw = sqrt(s_1) v_1`` (the scale shared evenly),
  with a fixed sign: the centre entry of larger magnitude of the two is made positive (if both are zero, the
  largest-magnitude entry of ``kh``), so every rank and every batch converts a kernel alike. Each axis kernel
  is then fitted into the layer's SGConv kernel: offset 0 is split evenly between the two sides (each side
  includes it), the near sub-kernel of each side takes the taps at offsets 0..3 as they are, the far
  sub-kernels are zero. That fit is exact when the geometry has the taps: ``kernel_dim >= 4`` (or 2 or 3, where
  the second sub-kernel is unstretched too) and ``l_max >= 4``. Otherwise it is the least-squares fit the
  geometry holds (``l_max < 4``: taps past ``l_max - 1``, which no map of the built size reaches, are dropped;
  ``kernel_dim == 1``: offsets 2 and 3 share one stretched value) and the log says so. The conv bias is
  copied. At its built size the converted layer computes exactly ``F.conv2d`` with the rank-1 7x7 kernel.
* ``"rank1_far_init"``: ``"rank1"``'s near field, and the far field at the scale of a fresh model's: every
  sub-kernel entry that reaches only offsets beyond 3 (zero under ``"rank1"``) keeps the layer's random init,
  scaled so those taps are exactly the fresh layer's (which has a unit-norm kernel). The converted function is
  then no longer the ConvNeXt's; a fine-tune starts with a far field to shape instead of zero.
* ``"none"``: the 7x7 kernels are dropped and the SGConv kernels keep their random initialization.

A classifier of another shape than the model's (an in-22k checkpoint's 21841 classes into a 1000-class model)
is not loaded: the model's head keeps its init, and the summary (logged as a warning, so it shows without any
logging setup) says so.

The kernels' ``norm`` (the constant each axis kernel is divided by) is set to the norm a kernel of the layer's
geometry has in expectation at initialization (the Frobenius norm of its basis), the same for every channel and
every seed, so the converted weights have the scale of freshly initialized ones.
"""
import logging
import re
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from timm.models.convnext import checkpoint_filter_fn as convnext_layout

from .checks import check_choice
from .kernel import SGKernel1d, pack_geometry
from .sgconv import SGConv2d

__all__ = ['CONVERSIONS', 'check_convert', 'check_sgconvnext', 'convert_convnext', 'convert_timm_layout',
           'rank1_axis_kernels', 'fit_axis_kernel', 'is_convnext_state_dict', 'convnext_layout_of', 'fit_problems',
           'to_timm_layout', 'size_hint', 'keep_model_head']

CONVERSIONS = ('rank1', 'rank1_far_init', 'none')
DEFAULT_CONVERT = 'rank1'
_DWCONV = re.compile(r'^stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.weight$')
_FB_DWCONV = re.compile(r'^stages\.(\d+)\.(\d+)\.dwconv\.weight$')
# a block's depthwise kernel in any layout: timm's and facebookresearch's 7x7, SGConv's kernel_h (C, 2, n, d)
_ANY_DWCONV = re.compile(r'^stages\.(\d+)\.(?:blocks\.)?(\d+)\.(?:conv_dw|dwconv)\.(?:weight|kernel_h\.weight)$')
_SIZES = {  # (depths, dims) -> the name of timm's convnext_* / sgconvnext_* of that size
    ((2, 2, 6, 2), (40, 80, 160, 320)): 'atto', ((2, 2, 6, 2), (48, 96, 192, 384)): 'femto',
    ((2, 2, 6, 2), (64, 128, 256, 512)): 'pico', ((2, 2, 8, 2), (80, 160, 320, 640)): 'nano',
    ((3, 3, 9, 3), (96, 192, 384, 768)): 'tiny', ((3, 3, 27, 3), (96, 192, 384, 768)): 'small',
    ((3, 3, 27, 3), (128, 256, 512, 1024)): 'base', ((3, 3, 27, 3), (192, 384, 768, 1536)): 'large',
    ((3, 3, 27, 3), (256, 512, 1024, 2048)): 'xlarge', ((3, 4, 30, 3), (384, 768, 1536, 3072)): 'xxlarge',
}

_logger = logging.getLogger(__name__)


def check_convert(value) -> str:
    return check_choice('sg_convert', value, CONVERSIONS)


def is_convnext_state_dict(state_dict: Dict[str, torch.Tensor]) -> bool:
    """A state dict (in timm's layout) with depthwise ``conv_dw.weight`` kernels and no SGConv kernels."""
    return convnext_layout_of(state_dict) == 'timm'


def convnext_layout_of(keys) -> Optional[str]:
    """``"timm"`` or ``"facebookresearch"`` for the keys of a ConvNeXt state dict in that layout (7x7 depthwise
    kernels, no SGConv kernels), else None."""
    keys = list(keys)
    if any('.conv_dw.kernel_' in k for k in keys):
        return None
    if any(_DWCONV.match(k) for k in keys):
        return 'timm'
    return 'facebookresearch' if any(_FB_DWCONV.match(k) for k in keys) else None


def check_sgconvnext(model) -> None:
    """TypeError unless ``model`` is a module with SGConv2d layers (the target of a conversion)."""
    if not isinstance(model, nn.Module) or not any(isinstance(m, SGConv2d) for m in model.modules()):
        raise TypeError(f'model must be an SGConvNeXt (e.g. timm.create_model("sgconvnext_tiny")), the target of '
                        f'the conversion; got a {type(model).__name__} with no SGConv2d layers')


def _size(state_dict) -> Optional[Tuple[Tuple[int, ...], Tuple[int, ...]]]:
    """(depths, dims) of a ConvNeXt / SGConvNeXt state dict in any layout, from its depthwise kernels."""
    depths, dims = defaultdict(int), {}
    for key, value in state_dict.items():
        match = _ANY_DWCONV.match(key)
        if match and isinstance(value, torch.Tensor) and value.dim() > 0:
            stage, block = int(match.group(1)), int(match.group(2))
            depths[stage] = max(depths[stage], block + 1)
            dims[stage] = value.shape[0]
    if not depths or sorted(depths) != list(range(len(depths))):
        return None
    return tuple(depths[i] for i in range(len(depths))), tuple(dims[i] for i in range(len(depths)))


def _describe(size) -> str:
    name = _SIZES.get(size)
    return f'{name + " " if name else ""}(depths {size[0]}, dims {size[1]})'


def size_hint(state_dict, model) -> str:
    """The end of a "does not fit" message: both model sizes where the checkpoint's can be read."""
    theirs, ours = _size(state_dict), _size(model.state_dict())
    if theirs is None or ours is None or theirs == ours:
        return 'Was it made for another model size? (e.g. convnext_tiny weights fit sgconvnext_tiny only)'
    name = _SIZES.get(theirs)
    fits = f'convnext_{name} weights fit sgconvnext_{name}' if name else 'convnext_X weights fit sgconvnext_X'
    return (f'It was made for another model size: {_describe(theirs)}, the model is {_describe(ours)} ({fits} '
            f'only)')


def to_timm_layout(state_dict, model) -> Dict[str, torch.Tensor]:
    """``state_dict`` with facebookresearch's ConvNeXt names mapped to timm's (timm's pass through), by timm's
    ConvNeXt filter. ValueError for a non-tensor entry or a facebookresearch checkpoint of another model size
    (timm's filter would fail with a bare KeyError / reshape error)."""
    if not isinstance(state_dict, dict):
        raise TypeError(f'state_dict must be a dict of tensors, got {type(state_dict).__name__}')
    try:
        out = convnext_layout(state_dict, model)
    except (KeyError, RuntimeError, AttributeError) as e:
        inner = state_dict['model'] if isinstance(state_dict.get('model'), dict) else state_dict
        theirs, ours = _size(inner), _size(model.state_dict())
        if theirs is not None and theirs != ours:
            raise ValueError('checkpoint does not fit this model: a facebookresearch ConvNeXt checkpoint. '
                             + size_hint(inner, model)) from None
        _check_tensors(inner)
        raise ValueError(f'cannot read the checkpoint as a ConvNeXt state dict ({type(e).__name__}: '
                         f'{" ".join(str(e).split())[:200]})') from None
    _check_tensors(out)
    return out


def _check_tensors(state_dict) -> None:
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f'checkpoint entry {key!r} is a {type(value).__name__}, not a tensor: pass a state dict '
                             f'(of a training checkpoint, its state_dict or state_dict_ema)')


def keep_model_head(state_dict, model, classifier: str, pretrained_load: bool = False):
    """(``state_dict`` with a classifier of another shape replaced by the model's own, what kept its init or None).

    An in-22k checkpoint's 21841-class head does not fit a 1000-class model: the model's head keeps its init
    (timm drops a head only when the model's class count differs from its pretrained cfg's).
    """
    model_state = model.state_dict()
    head, model_head = state_dict.get(classifier + '.weight'), model_state.get(classifier + '.weight')
    if model_head is None:
        return state_dict, None
    what = f'the head ({classifier}, {model_head.shape[0]} classes)'
    if head is not None and head.shape != model_head.shape:
        state_dict = dict(state_dict)
        for key in (classifier + '.weight', classifier + '.bias'):
            if key in model_state:
                state_dict[key] = model_state[key]
        return state_dict, f'{what} has {head.shape[0]} classes in the checkpoint and keeps its init'
    cfg_classes = getattr(model, 'pretrained_cfg', {}).get('num_classes')
    if head is not None and pretrained_load and cfg_classes != model_head.shape[0]:
        return state_dict, (f'{what} keeps its init (timm loads a pretrained head only into a model with the '
                            f'pretrained cfg\'s {cfg_classes} classes)')
    return state_dict, None


def rank1_axis_kernels(weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The best separable approximation of depthwise conv2d kernels, as two centred axis kernels.

    weight: (C, 1, k, k), k odd, applied by ``F.conv2d`` (correlation). Returns float64 ``kh``, ``kw`` of shape
    (C, k) for offsets ``-(k-1)/2 .. (k-1)/2`` of the convolution kernel ``kh[c] (outer) kw[c] ~= W[c].flip``,
    and the energy kept per channel, ``s_1**2 / sum(s_k**2)`` (C,) (1 for an all-zero kernel).
    """
    kernel = weight[:, 0].double().flip(-1, -2)  # conv2d correlates; SGConv2d convolves
    u, s, vh = torch.linalg.svd(kernel)
    scale = s[:, :1].sqrt()
    kh, kw = u[:, :, 0] * scale, vh[:, 0, :] * scale
    centre = kernel.shape[-1] // 2
    pick = torch.where(kh[:, centre].abs() >= kw[:, centre].abs(), kh[:, centre], kw[:, centre])
    largest = kh.gather(1, kh.abs().argmax(dim=1, keepdim=True))[:, 0]
    sign = torch.where(pick != 0, pick.sign(), largest.sign())
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    total = (s ** 2).sum(dim=1)
    energy = torch.where(total > 0, s[:, 0] ** 2 / total.clamp_min(torch.finfo(total.dtype).tiny),
                         torch.ones_like(total))
    return kh * sign[:, None], kw * sign[:, None], energy


def fit_axis_kernel(module: SGKernel1d, taps: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, float]:
    """SGKernel1d weights that give the centred kernel ``taps`` (C, 2h+1) at the module's built length.

    Returns weight (C, 2, n_scales, kernel_dim) and norm (C,), both float64, and the largest absolute error of a
    fitted tap at offsets ``|o| < l_max`` (0 when the geometry holds those taps exactly; taps farther out have
    no place in it, and no map of the built size reaches them)."""
    half = taps.shape[1] // 2
    centred = module._centred_basis(torch.float64).cpu()
    basis = centred[:module.n_scales * module.kernel_dim, module.l_max - 1:]  # (n*d, l_max): side 0, offsets >= 0
    norm = centred.norm().item()  # E ||w @ centred|| over w ~ N(0, 1): the init's scale
    sides = []
    for side in (taps[:, half:], taps[:, :half + 1].flip(-1)):  # offsets 0, 1, ..., h and 0, -1, ..., -h
        target = torch.zeros(taps.shape[0], module.l_max, dtype=torch.float64)
        reach = min(half + 1, module.l_max)
        target[:, :reach] = side[:, :reach]
        target[:, 0] = taps[:, half] / 2  # each side includes offset 0: half of the centre tap each
        sides.append(target)
    target = torch.stack(sides, dim=1)  # (C, 2, l_max)
    weight = target @ torch.linalg.pinv(basis)  # least squares; sub-kernels' columns are disjoint, far ones get 0
    error = (weight @ basis - target).abs().max().item() if target.numel() else 0.0
    shape = (taps.shape[0], 2, module.n_scales, module.kernel_dim)
    return (weight * norm).reshape(shape), torch.full((taps.shape[0],), norm, dtype=torch.float64), error


def fit_problems(state_dict: Dict[str, torch.Tensor], model_state: Dict[str, torch.Tensor], classifier: str,
                 may_miss=(), may_add=(), shape_free=()) -> List[str]:
    """What keeps ``state_dict`` from fitting ``model_state``: tensors of another shape (besides the classifier's
    and ``shape_free``), model tensors missing (besides ``may_miss``), checkpoint tensors with no place (besides
    ``may_add``)."""
    mismatched = [f'{k}: checkpoint {tuple(v.shape)}, model {tuple(model_state[k].shape)}'
                  for k, v in state_dict.items()
                  if k in model_state and v.shape != model_state[k].shape and not k.startswith(classifier + '.')
                  and k not in shape_free]
    missing = [k for k in model_state if k not in state_dict and k not in may_miss]
    unexpected = [k for k in state_dict if k not in model_state and k not in may_add]
    problems = []
    if mismatched:
        problems.append(f'{len(mismatched)} tensors of another shape ({"; ".join(mismatched[:3])})')
    if missing:
        problems.append(f'{len(missing)} model tensors missing from the checkpoint ({", ".join(missing[:3])})')
    if unexpected:
        problems.append(f'{len(unexpected)} checkpoint tensors the model has no place for '
                        f'({", ".join(unexpected[:3])})')
    return problems


def _check_kernel(key: str, weight, channels: int) -> None:
    if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
        got = weight.dtype if isinstance(weight, torch.Tensor) else type(weight).__name__
        # ValueError, not TypeError: timm's load_pretrained retries a filter that raises TypeError with one argument
        raise ValueError(f'{key} must be a floating point tensor, got {got}')
    k = weight.shape[-1] if weight.dim() == 4 else 0
    if weight.dim() != 4 or tuple(weight.shape[:3]) != (channels, 1, k) or k % 2 == 0:
        raise ValueError(f'{key} must be a depthwise kernel of shape ({channels}, 1, k, k) with k odd '
                         f'(ConvNeXt: 7x7), got {tuple(weight.shape)}')
    if not torch.isfinite(weight).all():
        bad = int((~torch.isfinite(weight)).sum())
        raise ValueError(f'{key} has {bad} non-finite values (NaN or inf): the checkpoint is damaged')


def _far_entries(module: SGKernel1d) -> torch.Tensor:
    """(n_scales * kernel_dim,) bool: the sub-kernel entries whose taps all lie at offsets beyond 3."""
    centred = module._centred_basis(torch.float64).cpu()
    side = centred[:module.n_scales * module.kernel_dim, module.l_max - 1:]  # (n*d, l_max): offsets >= 0
    return (side[:, :4] == 0).all(1)


def _keep_init_far_field(module: SGKernel1d, fitted, norm, init_weight, init_norm):
    """``fitted`` (C, 2, n, d) with its far entries replaced by the init's, rescaled from ``init_norm`` to ``norm``."""
    far = _far_entries(module).reshape(module.n_scales, module.kernel_dim)
    init = init_weight.double().cpu() * (norm / init_norm.double().cpu())[:, None, None, None]
    return torch.where(far, init, fitted)


def _convert_layer(layer: SGConv2d, weight: torch.Tensor, prefix: str, out: dict, model_state: dict,
                   far_init: bool = False):
    """Write ``layer``'s kernel tensors for the rank-1 approximation of ``weight`` into ``out``.

    ``far_init``: the far entries keep the layer's init (``model_state``'s), at the init's tap scale.

    Returns (mean energy kept, largest tap error of the fit, whether the layer's maps are too small for every tap).
    """
    kh, kw, energy = rank1_axis_kernels(weight)
    error = 0.0
    for name, module, taps in (('kernel_h', layer.kernel_h, kh), ('kernel_w', layer.kernel_w, kw)):
        fitted, norm, axis_error = fit_axis_kernel(module, taps)
        error = max(error, axis_error)
        key = f'{prefix}{name}.'
        if far_init:
            fitted = _keep_init_far_field(module, fitted, norm, model_state[key + 'weight'], model_state[key + 'norm'])
        out[key + 'weight'] = fitted.to(model_state[key + 'weight'].dtype)
        out[key + 'norm'] = norm.to(model_state[key + 'norm'].dtype)
        out[key + 'geometry'] = pack_geometry(module.l_max, module.kernel_dim, module.decay)
    return energy.mean().item(), error, min(layer.l_max) < weight.shape[-1] // 2 + 1


def convert_convnext(state_dict: Dict[str, torch.Tensor], model, method: str = DEFAULT_CONVERT,
                     log: bool = True, pretrained_load: bool = False) -> Dict[str, torch.Tensor]:
    """An SGConvNeXt state dict (geometry included) for ``model`` from a same-size ConvNeXt ``state_dict``.

    ``method``: ``"rank1"`` converts each 7x7 depthwise kernel (module docstring), ``"none"`` keeps the model's
    own SGConv kernels. A classifier of another shape keeps the model's init. Raises ValueError for a checkpoint
    of another model size, a kernel of the wrong shape, dtype or with non-finite values, TypeError for a model
    that is not an SGConvNeXt, and TypeError / ValueError for an unknown ``method``. Logs one summary line as a
    warning (``pretrained_load``: called by timm's pretrained loading, which drops a head of another class count).
    """
    check_convert(method)
    check_sgconvnext(model)
    return convert_timm_layout(to_timm_layout(state_dict, model), model, method, log, pretrained_load)


def convert_timm_layout(state_dict: Dict[str, torch.Tensor], model, method: str = DEFAULT_CONVERT,
                        log: bool = True, pretrained_load: bool = False) -> Dict[str, torch.Tensor]:
    """``convert_convnext`` for a state dict already in timm's layout (``to_timm_layout``) and a checked model."""
    if not is_convnext_state_dict(state_dict):
        raise ValueError('not a ConvNeXt state dict: it has no stages.N.blocks.M.conv_dw.weight kernels'
                         + (' (it holds SGConv kernels: load it as it is)' if any(
                             '.conv_dw.kernel_' in k for k in state_dict) else ''))
    model_state = model.state_dict()
    layers = {name + '.': m for name, m in model.named_modules() if isinstance(m, SGConv2d)}
    kernels = {k: v for k, v in state_dict.items() if _DWCONV.match(k)}
    sg_keys = [k for k in model_state if '.conv_dw.kernel_' in k]
    classifier = getattr(model, 'pretrained_cfg', {}).get('classifier', 'head.fc')
    problems = fit_problems(state_dict, model_state, classifier, may_miss=sg_keys,
                            may_add=[k for k in kernels if k[:-len('weight')] in layers])
    if problems:
        raise ValueError('checkpoint does not fit this model: ' + '; '.join(problems) + '. '
                         + size_hint(state_dict, model))
    for key, weight in kernels.items():
        _check_kernel(key, weight, layers[key[:-len('weight')]].dim)
    out, head = keep_model_head({k: v for k, v in state_dict.items() if k not in kernels}, model, classifier,
                                pretrained_load)
    kept = head or 'nothing kept its init'
    if method == 'none':
        out.update({k: model_state[k] for k in sg_keys})
        if log:
            _logger.warning(f'Warm start from ConvNeXt (sg_convert="none"): loaded {len(out) - len(sg_keys)} shared '
                            f'tensors; dropped {len(kernels)} 7x7 kernels; the SGConv kernels of {len(layers)} layers '
                            f'keep their random init' + (f'; {head}.' if head else '.'))
        return out
    energy, fits = defaultdict(list), []
    for key, weight in kernels.items():
        layer_energy, error, small = _convert_layer(layers[key[:-len('weight')]], weight, key[:-len('weight')], out,
                                                    model_state, far_init=method == 'rank1_far_init')
        energy[int(_DWCONV.match(key).group(1))].append(layer_energy)
        fits.append((error, key, small))
    if log:
        _log_conversion(len(state_dict) - len(kernels), energy, fits, kept, method)
    return out


def _log_conversion(shared: int, energy, fits, kept: str, method: str = DEFAULT_CONVERT) -> None:
    per_stage = ', '.join(f'{100 * sum(v) / len(v):.0f} %' for _, v in sorted(energy.items()))
    small = sum(1 for _, _, s in fits if s)
    inexact = [(e, k) for e, k, _ in fits if e > 1e-9]
    fit = [f'{sum(1 for e, _, s in fits if not s and e <= 1e-9)} fitted exactly']
    if small:
        fit.append(f'{small} on maps under 4 px keep the taps such maps reach (the best fit their geometry holds, '
                   f'exact at the built size)')
    if inexact:
        fit.append(f'{len(inexact)} to the best fit a kernel_dim this small holds (largest tap error '
                   f'{max(inexact)[0]:.3g}, {max(inexact)[1]})')
    fit = '; '.join(fit)
    # a warning, as for sg_convert="none": shown without any logging setup (a user sees weights were converted)
    far = '; the far field (offsets beyond 3) keeps its random init' if method == 'rank1_far_init' else ''
    _logger.warning(f'Warm start from ConvNeXt (sg_convert="{method}"): loaded {shared} shared tensors; converted '
                    f'{len(fits)} 7x7 kernels to rank-1 SGConv kernels ({fit}); energy kept by the rank-1 part, '
                    f'mean per stage: {per_stage}{far}; {kept}.')
