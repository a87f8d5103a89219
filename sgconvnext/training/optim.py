"""Loss, learning rate and mixed precision of a training run, from timm's flags.

* ``create_train_loss``: timm's losses as timm's train.py picks them (soft targets with mixup / cutmix,
  label smoothing, binary cross-entropy).
* ``resolve_lr``: ``--lr``, or ``--lr-base`` scaled to the global batch (timm's rule).
* ``create_amp``: the autocast context and, for float16, the grad scaler.
* ``create_optimizer``: timm's optimizer factory; ``--sg-kernel-lr-scale`` puts the SGConv kernel parameters in
  their own group with timm's ``lr_scale`` (which timm's schedulers multiply every LR they set by).
"""
import logging
from contextlib import nullcontext
from functools import partial

import torch
from timm import utils
from timm.optim import create_optimizer_v2, optimizer_kwargs, param_groups_weight_decay
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn

from .config import CLIError

__all__ = ['create_train_loss', 'resolve_lr', 'create_amp', 'create_optimizer', 'kernel_param_groups', 'base_lr']

_logger = logging.getLogger('train')


def create_train_loss(args) -> nn.Module:
    if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:  # mixup makes smoothed soft targets
        if args.bce_loss:
            return BinaryCrossEntropy(target_threshold=args.bce_target_thresh)
        return SoftTargetCrossEntropy()
    if args.smoothing:
        if args.bce_loss:
            return BinaryCrossEntropy(smoothing=args.smoothing, target_threshold=args.bce_target_thresh)
        return LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    return nn.CrossEntropyLoss()


def resolve_lr(args) -> None:
    """--lr if given, else --lr-base scaled from --lr-base-size to the global batch (timm's rule)."""
    global_batch = args.batch_size * args.world_size * args.grad_accum_steps
    if args.lr is None:
        scale = args.lr_base_scale or ('sqrt' if any(o in args.opt.lower() for o in ('ada', 'lamb')) else 'linear')
        ratio = global_batch / args.lr_base_size
        args.lr = args.lr_base * (ratio ** 0.5 if scale == 'sqrt' else ratio)
        _logger.info(f'Learning rate {args.lr:.3g} = lr_base {args.lr_base:g} x ({global_batch} / {args.lr_base_size})'
                     f'{"^0.5" if scale == "sqrt" else ""} ({scale} scaling, global batch {global_batch}).')
    else:
        _logger.info(f'Learning rate {args.lr:.3g} (from --lr), global batch {global_batch}.')


def create_amp(args, device: torch.device):
    """(autocast context factory, grad scaler or None) for --amp / --amp-dtype."""
    if not args.amp:
        return nullcontext, None
    if args.amp_dtype not in ('float16', 'bfloat16'):
        raise CLIError(f"--amp-dtype must be float16 or bfloat16, got '{args.amp_dtype}'")
    amp_dtype = getattr(torch, args.amp_dtype)
    amp_autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype)
    loss_scaler = None
    if amp_dtype == torch.float16:  # bfloat16 has float32's range and needs no loss scaling
        loss_scaler = utils.NativeScaler(device=device.type)
    _logger.info(f'Mixed precision: {args.amp_dtype} autocast{" with grad scaler" if loss_scaler else ""}.')
    return amp_autocast, loss_scaler


def kernel_param_groups(model: nn.Module, weight_decay: float, lr: float, kernel_lr_scale: float) -> list:
    """timm's weight-decay groups, with the SGConv kernel parameters apart: ``lr_scale`` = kernel_lr_scale, no decay."""
    from sgconvnext import SGConv2d
    kernels = {id(p) for m in model.modules() if isinstance(m, SGConv2d) for p in (m.kernel_h.weight, m.kernel_w.weight)}
    if not kernels:
        raise CLIError(f'--sg-kernel-lr-scale {kernel_lr_scale:g} needs an sgconvnext model (SGConv2d layers); '
                       f'{type(model).__name__} has none')
    skip = model.no_weight_decay() if hasattr(model, 'no_weight_decay') else ()
    groups = []
    for group in param_groups_weight_decay(model, weight_decay, skip):
        rest = [p for p in group['params'] if id(p) not in kernels]
        if rest:
            groups.append(dict(group, params=rest))
    # lr: the scaled LR from the first step on; initial_lr: the base timm's schedulers scale by lr_scale each time
    groups.append(dict(params=[p for p in model.parameters() if id(p) in kernels], weight_decay=0.0,
                       lr_scale=kernel_lr_scale, lr=lr * kernel_lr_scale, initial_lr=lr))
    return groups


def create_optimizer(args, model: nn.Module) -> torch.optim.Optimizer:
    """``create_optimizer_v2`` from timm's flags; the SGConv kernels in their own group if --sg-kernel-lr-scale."""
    scale = args.sg_kernel_lr_scale
    if scale == 1.0:
        return create_optimizer_v2(model, **optimizer_kwargs(cfg=args), **args.opt_kwargs)
    if not scale > 0:
        raise CLIError(f'--sg-kernel-lr-scale must be > 0, got {scale:g}')
    if args.layer_decay is not None:
        raise CLIError('--sg-kernel-lr-scale and --layer-decay both set lr_scale per group; pass one of them')
    kwargs = optimizer_kwargs(cfg=args)
    groups = kernel_param_groups(model, kwargs.pop('weight_decay'), args.lr, scale)
    _logger.info(f'SGConv kernels learn at {scale:g} x the LR ({sum(p.numel() for p in groups[-1]["params"])} '
                 f'parameters, no weight decay).')
    return create_optimizer_v2(groups, weight_decay=0.0, **{k: v for k, v in kwargs.items() if k != 'layer_decay'},
                               **args.opt_kwargs)


def base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The schedule's LR: the mean over groups of lr / lr_scale (a scaled group does not skew the log)."""
    lrs = [g['lr'] / g.get('lr_scale', 1.0) for g in optimizer.param_groups]
    return sum(lrs) / len(lrs)
