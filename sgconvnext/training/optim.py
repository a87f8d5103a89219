"""Loss, learning rate and mixed precision of a training run, from timm's flags.

* ``create_train_loss``: timm's losses as timm's train.py picks them (soft targets with mixup / cutmix,
  label smoothing, binary cross-entropy).
* ``resolve_lr``: ``--lr``, or ``--lr-base`` scaled to the global batch (timm's rule).
* ``create_amp``: the autocast context and, for float16, the grad scaler.
"""
import logging
from contextlib import nullcontext
from functools import partial

import torch
from timm import utils
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn

from .config import CLIError

__all__ = ['create_train_loss', 'resolve_lr', 'create_amp']

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
