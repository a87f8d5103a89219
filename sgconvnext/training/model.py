"""Model creation for the training and validation scripts: timm's ``create_model`` with one-line errors.

* An unknown model name is a CLIError with the closest registered names.
* sgconvnext models get ``img_size`` (the size their SGConv kernels are built for) from the training
  resolution, unless ``--model-kwargs img_size=...`` sets it.
* ``pretrained_path`` is loaded as the pretrained weights (timm's ``--pretrained-path``): for
  sgconvnext models this is how a ConvNeXt checkpoint becomes a warm start.
* ``build_model(args)``: the model of a training run from its flags (head init, grad checkpointing).
* ``setup_backends(args, model, ...)``: --sg-tune / --sg-backend-table (``sgconvnext.tuning``).
"""
import difflib
import logging
import os
from typing import Optional, Sequence

import timm
import torch
from timm.models import model_entrypoint
from torch import nn

from ..tuning import format_backend_table, load_backend_table, tune_backends
from .config import CLIError

_logger = logging.getLogger('train')

__all__ = ['is_sgconvnext', 'check_model_name', 'create_model_checked', 'build_model', 'setup_backends']


def is_sgconvnext(name: str) -> bool:
    return timm.is_model(name) and model_entrypoint(name).__module__.startswith('sgconvnext')


def check_model_name(name: str) -> None:
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; list them with timm.list_models('*name*')"
        raise CLIError(f"unknown model '{name}' (not registered with timm, sgconvnext_* included){hint}")


def create_model_checked(
        name: str,
        *,
        pretrained: bool = False,
        pretrained_path: Optional[str] = None,
        img_size: Optional[Sequence[int]] = None,
        model_kwargs: Optional[dict] = None,
        **kwargs,
):
    """``timm.create_model(name, ...)``; ``img_size`` (H, W) only reaches sgconvnext models."""
    check_model_name(name)
    model_kwargs = dict(model_kwargs or {})
    if pretrained_path:
        if not os.path.isfile(pretrained_path):
            raise CLIError(f'--pretrained-path {pretrained_path} is not a file')
        # 'file' takes priority over the cfg's url / hub id; the head loads when the class counts match
        kwargs['pretrained_cfg_overlay'] = dict(file=pretrained_path)
    if is_sgconvnext(name):
        if pretrained and not pretrained_path:
            raise CLIError(f'--pretrained needs --pretrained-path PATH for {name} (no released weights yet): an '
                           f'{name} checkpoint, or a same-size convnext_* one for a warm start')
        if img_size is not None and 'img_size' not in model_kwargs:
            model_kwargs['img_size'] = tuple(img_size)
    checkpoint_path = kwargs.get('checkpoint_path')
    if checkpoint_path and not os.path.isfile(checkpoint_path):
        raise CLIError(f'--initial-checkpoint {checkpoint_path} is not a file')
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs, **model_kwargs)
    except (ValueError, RuntimeError, TypeError, FileNotFoundError) as e:
        message = ' '.join(str(e).split())
        raise CLIError(f'cannot create {name}: {message[:600]}') from None


def build_model(args) -> nn.Module:
    """The model train_imagenet.py trains, from its flags; sets ``args.num_classes`` when it was None."""
    in_chans = args.in_chans or (args.input_size[0] if args.input_size else 3)
    if args.input_size:
        img_size = tuple(args.input_size[1:])
    else:
        img_size = (args.img_size, args.img_size) if args.img_size else None
    model = create_model_checked(
        args.model,
        pretrained=args.pretrained,
        pretrained_path=args.pretrained_path,
        img_size=img_size,  # sgconvnext: the kernels are sized for the training resolution
        model_kwargs=args.model_kwargs,
        in_chans=in_chans,
        num_classes=args.num_classes,
        drop_rate=args.drop,
        drop_path_rate=args.drop_path,
        drop_block_rate=args.drop_block,
        global_pool=args.gp,
        bn_momentum=args.bn_momentum,
        bn_eps=args.bn_eps,
        checkpoint_path=args.initial_checkpoint,
    )
    if args.head_init_scale is not None:
        with torch.no_grad():
            model.get_classifier().weight.mul_(args.head_init_scale)
            model.get_classifier().bias.mul_(args.head_init_scale)
    if args.head_init_bias is not None:
        nn.init.constant_(model.get_classifier().bias, args.head_init_bias)
    if args.num_classes is None:
        args.num_classes = model.num_classes
    if args.grad_checkpointing:
        model.set_grad_checkpointing(enable=True)
    return model


def setup_backends(args, model: nn.Module, input_size, device: torch.device, amp_autocast,
                   modes=('train', 'infer')) -> None:
    """--sg-tune: time SGConv2d's backends for a batch on ``device`` (training and / or inference: ``modes``), in
    the run's memory format and autocast (rank 0 times, every rank runs its choices); --sg-backend-table: apply a
    saved table."""
    if not (args.sg_tune or args.sg_backend_table):
        return
    if args.sg_tune and args.sg_backend_table:
        raise CLIError('--sg-tune times the backends and --sg-backend-table loads a saved choice: pass one of them')
    if not is_sgconvnext(args.model):
        raise CLIError(f'--sg-tune / --sg-backend-table tune SGConv2d layers; {args.model} has none')
    shape = (args.batch_size, *input_size)
    if args.sg_backend_table:
        try:
            table = load_backend_table(model, args.sg_backend_table, device, input_shape=shape)
        except ValueError as e:
            raise CLIError(str(e)) from None
        if table is not None:
            _logger.info(f'SGConv2d backends from {args.sg_backend_table}:\n{format_backend_table(table)}')
        return
    with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):  # a tuned run draws as an untuned
        x = torch.randn(shape, device=device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with amp_autocast():
        table = tune_backends(model, x, modes=modes)
    _logger.info(f'SGConv2d backends tuned for this run:\n{format_backend_table(table)}')
