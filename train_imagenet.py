#!/usr/bin/env python3
"""Train SGConvNeXt (or any timm model) on ImageNet-style data with timm's recipe and flags.

    python train_imagenet.py -c configs/sgconvnext_tiny_in1k.yaml --data-dir /data/imagenet
    torchrun --nproc_per_node=8 train_imagenet.py -c configs/sgconvnext_tiny_in1k.yaml --data-dir /data/imagenet
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 --rdzv-id=RUN \\
        train_imagenet.py -c configs/sgconvnext_tiny_in1k.yaml --data-dir /data/imagenet

Flags and YAML keys are those of timm's train.py (see sgconvnext/training/config.py); the command line wins
over the config. Built from timm's library parts: create_dataset / create_loader / Mixup, timm.loss,
create_optimizer_v2, create_scheduler_v2, ModelEmaV3, CheckpointSaver, distribute_bn.

Writes (rank 0 only) to --output/--experiment: args.yaml, summary.csv (one row per epoch: epoch,
train_loss, eval_loss, eval_top1, eval_top5, [eval_ema_*], lr), last.pth.tar, model_best.pth.tar and
ranked checkpoint-N.pth.tar. --resume DIR/last.pth.tar continues a run where its last epoch ended;
--resume auto does that when the run's last.pth.tar exists and starts fresh otherwise (for torchrun
--max-restarts and requeued jobs). SIGTERM or SIGUSR1 stops every rank at the next step, saves
last.pth.tar and exits 0 (sgconvnext/training/preemption.py). Input problems stop the run with a
one-line message (CLIError), not a traceback.
"""
import logging
import math
import os
import time
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from timm import utils
from timm.data import resolve_data_config
from timm.models import model_parameters
from timm.scheduler import create_scheduler_v2, scheduler_kwargs

import sgconvnext  # noqa: F401  (registers sgconvnext_* with timm)
from sgconvnext.atomic import atomic_open
from sgconvnext.training.checkpoint import (
    CheckpointSaver, experiment_name, load_ema_state, restore_scheduler, resume_run, trim_summary)
from sgconvnext.training.config import CLIError, parse_args, run_cli
from sgconvnext.training.data import create_loaders
from sgconvnext.training.distributed import check_step_counts, mean_over_ranks, setup_distributed
from sgconvnext.training.eval import evaluate
from sgconvnext.training.model import build_model, setup_backends
from sgconvnext.training.optim import base_lr, create_amp, create_optimizer, create_train_loss, resolve_lr
from sgconvnext.training.preemption import StopOnSignal, stop_agreed

_logger = logging.getLogger('train')


def main(argv=None):
    args, args_text = parse_args(argv)
    with StopOnSignal() as stop:  # SIGTERM / SIGUSR1: stop at the next step, save, exit 0
        train(args, args_text, stop)


def train(args, args_text: str, stop: StopOnSignal):
    """Set up, then train epoch after epoch: each phase is one call, in the order it runs."""
    device = setup_distributed(args)
    model, data_config = create_model(args, device)
    loader_train, loader_eval, mixup_fn = create_loaders(args, data_config, device)
    for loader in (loader_train, loader_eval):
        stop.protect_loader_workers(loader)
    loss_fn = create_train_loss(args).to(device)
    eval_metric = args.eval_metric if loader_eval is not None else 'loss'
    if eval_metric not in ('loss', 'top1', 'top5'):
        raise CLIError(f"--eval-metric must be loss, top1 or top5, got '{args.eval_metric}'")
    resolve_lr(args)
    optimizer = create_optimizer(args, model)
    amp_autocast, loss_scaler = create_amp(args, device)
    setup_backends(args, model, data_config['input_size'], device, amp_autocast)  # --sg-tune, --sg-backend-table

    run_dir = os.path.join(args.output or './output/train',
                           experiment_name(args, args_text, img_size=data_config['input_size'][-1]))
    checkpoint, start_epoch, resume_path = resume_run(  # every rank reads; nothing is written before this
        args, run_dir, model=model, optimizer=None if args.no_resume_opt else optimizer,
        loss_scaler=None if args.no_resume_opt else loss_scaler, device=device)
    model_ema = create_ema(args, model, checkpoint, resume_path)  # the resumed weights, before compile and DDP
    model, eval_model = wrap_model(args, model, device)
    run = Run(args=args, device=device, stop=stop, model=model, eval_model=eval_model, model_ema=model_ema,
              loader_train=loader_train, loader_eval=loader_eval, mixup_fn=mixup_fn, loss_fn=loss_fn,
              eval_metric=eval_metric, optimizer=optimizer, amp_autocast=amp_autocast, loss_scaler=loss_scaler)
    scheduler_config, num_epochs = create_schedule(run, checkpoint, start_epoch)
    if utils.is_primary(args):
        prepare_output(run, run_dir, args_text, scheduler_config, checkpoint, resume_path, start_epoch, num_epochs)
    if start_epoch >= num_epochs:
        _logger.info(f'Nothing to train: the run starts at epoch {start_epoch} and has {num_epochs} epochs.')
    del checkpoint
    total_updates = train_epochs(run, start_epoch, num_epochs)
    check_step_counts(args, device, total_updates)


# ----------------------------------------------------------------------------------------------------- set-up

def create_model(args, device: torch.device):
    """(model on ``device`` in its memory format, SyncBatchNorm'd when asked; the data config it implies)."""
    model = build_model(args)
    _logger.info(f'Model {args.model} created, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters.')
    data_config = resolve_data_config(vars(args), model=model, verbose=utils.is_primary(args))
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.distributed and args.sync_bn:
        args.dist_bn = ''
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model, data_config


def create_ema(args, model: nn.Module, checkpoint: Optional[dict], resume_path: Optional[str]):
    """timm's ModelEmaV3 of the (resumed) weights, its own state restored on resume; None without --model-ema."""
    if not args.model_ema:
        return None
    model_ema = utils.ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                                 device='cpu' if args.model_ema_force_cpu else None)
    if checkpoint is not None:
        load_ema_state(checkpoint, resume_path, model_ema)
    return model_ema


def wrap_model(args, model: nn.Module, device: torch.device):
    """(the model to train: compiled and wrapped in DDP as asked; the plain module to evaluate)."""
    if args.torchcompile:
        model = torch.compile(model, backend=args.torchcompile, mode=args.torchcompile_mode)
    if args.distributed:
        ddp_kwargs = dict(broadcast_buffers=False) if args.no_ddp_bb else {}  # torch's default: broadcast
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == 'cuda' else None, **ddp_kwargs)
    return model, model.module if args.distributed else model


@dataclass
class Run:
    """What the epoch loop works with, made by train()'s set-up phases."""
    args: Any
    device: torch.device
    stop: StopOnSignal
    model: nn.Module  # compiled / DDP-wrapped as asked
    eval_model: nn.Module
    model_ema: Optional[utils.ModelEmaV3]
    loader_train: Any
    loader_eval: Any  # None with --val-split ''
    mixup_fn: Optional[Callable]  # None when mixup runs in the loader's collate, or not at all
    loss_fn: nn.Module
    eval_metric: str
    optimizer: torch.optim.Optimizer
    amp_autocast: Callable
    loss_scaler: Any
    lr_scheduler: Any = None
    updates_per_epoch: int = 0
    saver: Optional[CheckpointSaver] = None  # rank 0 only, like the two paths below
    output_dir: Optional[str] = None
    summary_path: Optional[str] = None


def create_schedule(run: Run, checkpoint: Optional[dict], start_epoch: int):
    """timm's LR schedule over the run's updates, restored to ``start_epoch``: (its config, number of epochs)."""
    args = run.args
    run.updates_per_epoch = (len(run.loader_train) + args.grad_accum_steps - 1) // args.grad_accum_steps
    sched_kwargs = scheduler_kwargs(args, decreasing_metric=run.eval_metric == 'loss')
    run.lr_scheduler, num_epochs = create_scheduler_v2(
        run.optimizer, **sched_kwargs, updates_per_epoch=run.updates_per_epoch)
    scheduler_config = dict(sched_kwargs, updates_per_epoch=run.updates_per_epoch)
    restore_scheduler(checkpoint, run.lr_scheduler, scheduler_config, start_epoch, run.updates_per_epoch,
                      args.sched_on_updates)
    return scheduler_config, num_epochs


def prepare_output(run: Run, run_dir: str, args_text: str, scheduler_config: dict, checkpoint: Optional[dict],
                   resume_path: Optional[str], start_epoch: int, num_epochs: int) -> None:
    """Rank 0: the run folder, args.yaml, summary.csv trimmed to ``start_epoch`` and the checkpoint saver."""
    args = run.args
    run.output_dir = utils.get_outdir(run_dir)
    with atomic_open(os.path.join(run.output_dir, 'args.yaml')) as f:
        f.write(args_text)
    run.summary_path = os.path.join(run.output_dir, 'summary.csv')
    trim_summary(run.summary_path, start_epoch)
    run.saver = CheckpointSaver(
        model=run.model, optimizer=run.optimizer, args=args, model_ema=run.model_ema, amp_scaler=run.loss_scaler,
        checkpoint_dir=run.output_dir, recovery_dir=run.output_dir, decreasing=run.eval_metric == 'loss',
        max_history=args.checkpoint_hist, lr_scheduler=run.lr_scheduler, scheduler_config=scheduler_config)
    if checkpoint is not None and checkpoint.get('saver') and hasattr(run.saver, 'load_state_dict'):
        # best metric and ranked files belong to the checkpoint's folder: a new output folder starts fresh
        if os.path.samefile(os.path.dirname(os.path.abspath(resume_path)), run.output_dir):
            run.saver.load_state_dict(checkpoint['saver'])
        else:
            _logger.info(f'Resuming into a new output folder {run.output_dir}: checkpoint ranking starts fresh.')
    _logger.info(f'Output: {run.output_dir}. Epochs {start_epoch}..{num_epochs - 1}, {run.updates_per_epoch} '
                 f'updates of {args.batch_size * args.world_size * args.grad_accum_steps} images each.')


# ------------------------------------------------------------------------------------------------ the epochs

def train_epochs(run: Run, start_epoch: int, num_epochs: int) -> int:
    """Train, evaluate and save each epoch until the last or a stop signal; the optimizer steps taken."""
    args, stop = run.args, run.stop
    total_updates = 0
    for epoch in range(start_epoch, num_epochs):
        epoch_start = time.time()
        for obj in (run.loader_train.dataset, getattr(run.loader_train, 'sampler', None)):
            if hasattr(obj, 'set_epoch'):
                obj.set_epoch(epoch)
        kept = kept_checkpoint(run)
        train_metrics, updates, stopped = train_one_epoch(run, epoch, kept)
        total_updates += updates
        if stopped:  # SIGTERM / SIGUSR1 on some rank: every rank stopped after the same step
            saved = run.saver.save_preempted(epoch, updates) if run.saver is not None and updates else 'nothing new'
            _logger.info(f'Stopped by {", ".join(stop.received) or "a signal to another rank"} after {updates} updates '
                         f'of epoch {epoch}; saved: {saved}. Exit status 0; resuming trains epoch {epoch} again.')
            break
        if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
            utils.distribute_bn(run.model, args.world_size, args.dist_bn == 'reduce')
        train_time = time.time() - epoch_start
        eval_metrics = evaluate_epoch(run)
        end_epoch(run, epoch, train_metrics, eval_metrics, kept, epoch_start, train_time)
        if epoch + 1 < num_epochs and stop_agreed(stop, run.device, args.distributed):  # signal during eval or save
            _logger.info(f'Stopped by {", ".join(stop.received) or "a signal to another rank"} after epoch {epoch} '
                         f'and its checkpoint. Exiting with status 0; a resume continues at epoch {epoch + 1}.')
            break
    return total_updates


def kept_checkpoint(run: Run) -> str:
    """What a failure in this epoch leaves behind, for its error message."""
    last = os.path.join(run.output_dir, 'last.pth.tar') if run.output_dir else None
    if not utils.is_primary(run.args):
        return "rank 0's checkpoints are kept"
    if os.path.exists(last):
        return f'the last good checkpoint {last} is kept; resume from it'
    return 'no checkpoint was written yet'


def evaluate_epoch(run: Run) -> Optional[OrderedDict]:
    """Eval metrics of the model and, with EMA, ``ema_*`` ones of its EMA weights; None without a val set."""
    if run.loader_eval is None:
        return None
    args = run.args
    eval_args = dict(amp_autocast=run.amp_autocast, channels_last=args.channels_last,
                     log_interval=args.log_interval, verbose=utils.is_primary(args), distributed=args.distributed)
    eval_metrics = evaluate(run.eval_model, run.loader_eval, run.device, **eval_args)
    if run.model_ema is not None and not args.model_ema_force_cpu:
        if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
            utils.distribute_bn(run.model_ema, args.world_size, args.dist_bn == 'reduce')
        ema_metrics = evaluate(run.model_ema.module, run.loader_eval, run.device, log_name='Test (EMA)', **eval_args)
        eval_metrics.update((f'ema_{k}', v) for k, v in ema_metrics.items())
    return eval_metrics


def end_epoch(run: Run, epoch: int, train_metrics, eval_metrics, kept: str, epoch_start: float,
              train_time: float) -> None:
    """Check the metrics, step the LR schedule and (rank 0) write the summary row and the checkpoints."""
    ranked = eval_metrics or train_metrics
    metric = ranked.get(f'ema_{run.eval_metric}', ranked[run.eval_metric])
    if not all(math.isfinite(v) for v in [*train_metrics.values(), *(eval_metrics or {}).values()]):
        raise CLIError(f'non-finite metrics after epoch {epoch} ({dict(train_metrics, **(eval_metrics or {}))}): '
                       f'stopped without saving; {kept}. Lower --lr or add --clip-grad')
    lr = base_lr(run.optimizer)
    if run.lr_scheduler is not None:
        run.lr_scheduler.step(epoch + 1, metric)  # before saving: a checkpoint holds the state for the next epoch
    if run.saver is None:
        return
    # summary row first: a kill between the two is undone by trim_summary on resume
    utils.update_summary(epoch, train_metrics, eval_metrics, filename=run.summary_path, lr=lr,
                         write_header=not os.path.exists(run.summary_path) or os.path.getsize(run.summary_path) == 0)
    best_metric, best_epoch = run.saver.save_checkpoint(epoch, metric=metric)
    _logger.info(f'Epoch {epoch} done in {time.time() - epoch_start:.1f}s (train {train_time:.1f}s): '
                 f'{run.eval_metric} {metric:.4f}, best {best_metric:.4f} (epoch {best_epoch}).')


# -------------------------------------------------------------------------------------------------- one epoch

def train_one_epoch(run: Run, epoch: int, kept: str):
    """One pass over the training loader: (OrderedDict(loss=mean over ranks), optimizer steps taken, stopped).

    ``stopped``: some rank was asked to stop (``run.stop``, a StopOnSignal); every rank leaves after the same
    update, and the metrics are None. ``kept`` says what a non-finite loss leaves behind."""
    args, loader = run.args, run.loader_train
    if args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
        if getattr(loader, 'mixup_enabled', False):
            loader.mixup_enabled = False
        if run.mixup_fn is not None:
            run.mixup_fn.mixup_enabled = False
    run.model.train()
    accum = args.grad_accum_steps
    num_batches = len(loader)
    last_group_start = num_batches - num_batches % accum  # batches from here on form a shorter last group
    clip_params = list(model_parameters(run.model, exclude_head='agc' in args.clip_mode)) if args.clip_grad else None
    losses = utils.AverageMeter()
    progress = Progress(run, epoch)
    num_updates, updates = epoch * run.updates_per_epoch, 0
    run.optimizer.zero_grad()
    for batch_idx, (input, target) in enumerate(loader):
        need_update = (batch_idx + 1) % accum == 0 or batch_idx == num_batches - 1
        group = accum if batch_idx < last_group_start else num_batches - last_group_start
        input, target = input.to(run.device, non_blocking=True), target.to(run.device, non_blocking=True)
        if run.mixup_fn is not None:
            input, target = run.mixup_fn(input, target)
        if args.channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
        loss_value = train_step(run, input, target, group, need_update, clip_params, epoch, batch_idx, kept)
        if loss_value is None:  # asked to stop, at an update boundary: before this batch's step
            return None, updates, True
        losses.update(loss_value, input.size(0))
        progress.samples += input.size(0) * args.world_size
        if not need_update:
            continue
        run.optimizer.zero_grad()
        num_updates += 1
        updates += 1
        if run.model_ema is not None:
            run.model_ema.update(utils.unwrap_model(run.model), step=num_updates)
        update_idx = batch_idx // accum
        if update_idx % args.log_interval == 0 or batch_idx == num_batches - 1:
            progress.log(update_idx, updates, loss_value, losses.avg)
        if run.lr_scheduler is not None:
            run.lr_scheduler.step_update(num_updates=num_updates, metric=losses.avg)
    return OrderedDict(loss=mean_over_ranks(losses.avg, args, run.device)), updates, False


def train_step(run: Run, input, target, group: int, need_update: bool, clip_params, epoch: int, batch_idx: int,
               kept: str) -> Optional[float]:
    """Forward and backward of one batch (loss / ``group`` for gradient accumulation), then the optimizer step when
    ``need_update``: the batch's loss, or None when some rank was asked to stop at an update boundary."""
    args = run.args
    with run.model.no_sync() if args.distributed and not need_update else nullcontext():
        with run.amp_autocast():
            loss = run.loss_fn(run.model(input), target)
        # every rank must stop at the same batch: one that raised alone would leave the others in an all-reduce
        flags = torch.stack([(~torch.isfinite(loss.detach())).to(torch.int32), run.stop.flag(run.device)])
        if args.distributed:
            dist.all_reduce(flags)  # SUM: ranks with a non-finite loss, ranks asked to stop
        bad, stopping = flags.tolist()
        if stopping and batch_idx % args.grad_accum_steps == 0:
            return None
        if bad:
            where = f'on {bad} of {args.world_size} ranks' if args.distributed else f'({loss.item()})'
            raise CLIError(f'non-finite loss {where} at epoch {epoch}, batch {batch_idx}: stopped before '
                           f'this step; {kept}. Lower --lr (or --lr-base), add --clip-grad, or use '
                           f'--amp-dtype bfloat16 instead of float16')
        loss_value = loss.item()
        if run.loss_scaler is not None:
            run.loss_scaler(loss / group, run.optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                            parameters=clip_params, need_update=need_update)
        else:
            (loss / group).backward()
            if need_update:
                if args.clip_grad is not None:
                    utils.dispatch_clip_grad(clip_params, value=args.clip_grad, mode=args.clip_mode)
                run.optimizer.step()
    return loss_value


class Progress:
    """The progress line every --log-interval updates: loss, LR, img/s since the last line, the epoch's ETA."""

    def __init__(self, run: Run, epoch: int):
        self.run, self.epoch = run, epoch
        self.epoch_start = self.window_start = time.time()
        self.samples = 0  # images (all ranks) since the last line

    def log(self, update_idx: int, updates: int, loss_value: float, loss_avg: float) -> None:
        run, now = self.run, time.time()
        loss_avg = mean_over_ranks(loss_avg, run.args, run.device)
        eta = (now - self.epoch_start) / updates * (run.updates_per_epoch - updates)
        done = 100 * (update_idx + 1) / run.updates_per_epoch
        _logger.info(
            f'Train: {self.epoch} [{update_idx:>4d}/{run.updates_per_epoch} ({done:>3.0f}%)]  '
            f'Loss: {loss_value:#.3g} ({loss_avg:#.3g})  LR: {base_lr(run.optimizer):.3e}  '
            f'{self.samples / max(now - self.window_start, 1e-9):>7.1f} img/s  '
            f'ETA (epoch): {timedelta(seconds=round(eta))}')
        self.window_start, self.samples = now, 0


if __name__ == '__main__':
    run_cli(main)
