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
import importlib
import logging
import math
import os
import time
from collections import OrderedDict
from contextlib import nullcontext
from datetime import timedelta
from functools import partial

import torch
import torch.distributed as dist
import torch.nn as nn
from timm import utils
from timm.data import FastCollateMixup, Mixup, create_loader, resolve_data_config
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import model_parameters
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs

import sgconvnext  # noqa: F401  (registers sgconvnext_* with timm)
from sgconvnext.atomic import atomic_open
from sgconvnext.training.checkpoint import (
    CheckpointSaver, experiment_name, load_ema_state, restore_scheduler, resume_run, trim_summary)
from sgconvnext.training.config import CLIError, parse_args, run_cli
from sgconvnext.training.data import create_checked_dataset
from sgconvnext.training.eval import evaluate
from sgconvnext.training.model import create_model_checked
from sgconvnext.training.preemption import StopOnSignal, stop_agreed

_logger = logging.getLogger('train')


def setup_logging(primary: bool) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(utils.FormatterNoInfo())
    logging.basicConfig(level=logging.INFO if primary else logging.WARNING, handlers=[handler], force=True)


def setup_device(args) -> torch.device:
    """Pick the device (cuda when available unless --device says otherwise) and join the torchrun group."""
    if args.device is None:
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise CLIError(f'--device {args.device} but CUDA is not available here; pass --device cpu')
    device = utils.init_distributed_device(args)  # sets args.distributed, world_size, rank, local_rank
    if args.distributed:
        _logger.info(f'Distributed training: {args.world_size} processes, backend {dist.get_backend()}, '
                     f'rank 0 on {args.device}.')
    else:
        _logger.info(f'Training with a single process on {args.device}.')
    return device


def build_model(args) -> nn.Module:
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


def create_loaders(args, data_config, device):
    """Train and eval loaders (eval is None with --val-split ''), and the Mixup fn when not in the collate."""
    dataset_kwargs = dict(
        class_map=args.class_map, download=args.dataset_download, batch_size=args.batch_size,
        input_img_mode=args.input_img_mode or ('RGB' if data_config['input_size'][0] == 3 else 'L'),
        input_key=args.input_key, target_key=args.target_key, trust_remote_code=args.dataset_trust_remote_code)
    dataset_train = create_checked_dataset(
        args.dataset, args.data_dir, args.train_split, is_training=True, flag='--train-split', seed=args.seed,
        repeats=args.epoch_repeats, num_samples=args.train_num_samples, **dataset_kwargs)
    dataset_eval = None
    if args.val_split:
        dataset_eval = create_checked_dataset(
            args.dataset, args.data_dir, args.val_split, is_training=False, flag='--val-split',
            num_samples=args.val_num_samples, **dataset_kwargs)
    num_dataset_classes = len(getattr(getattr(dataset_train, 'reader', None), 'class_to_idx', None) or {})
    if num_dataset_classes > args.num_classes:
        raise CLIError(f'the training set has {num_dataset_classes} classes but {args.model} has {args.num_classes} '
                       f'outputs; pass --num-classes {num_dataset_classes}')

    mixup_fn, collate_fn = None, None
    if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
        if args.batch_size % 2:
            raise CLIError(f'mixup / cutmix need an even --batch-size, got {args.batch_size}')
        mixup_args = dict(
            mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
            prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
            label_smoothing=args.smoothing, num_classes=args.num_classes)
        if args.prefetcher:
            collate_fn = FastCollateMixup(**mixup_args)
        else:
            mixup_fn = Mixup(**mixup_args)

    common = dict(mean=data_config['mean'], std=data_config['std'], pin_memory=args.pin_mem, device=device,
                  distributed=args.distributed, use_prefetcher=args.prefetcher)
    loader_train = create_loader(
        dataset_train, input_size=data_config['input_size'], batch_size=args.batch_size, is_training=True,
        no_aug=args.no_aug, re_prob=args.reprob, re_mode=args.remode, re_count=args.recount, re_split=args.resplit,
        train_crop_mode=args.train_crop_mode, scale=args.scale, ratio=args.ratio, hflip=args.hflip,
        vflip=args.vflip, color_jitter=args.color_jitter, auto_augment=args.aa, num_aug_repeats=args.aug_repeats,
        interpolation=data_config['interpolation'] if args.no_aug or not args.train_interpolation
        else args.train_interpolation,
        num_workers=args.workers, worker_seeding=args.worker_seeding, collate_fn=collate_fn,
        use_multi_epochs_loader=args.use_multi_epochs_loader, **common)
    if len(loader_train) == 0:
        raise CLIError(f'the training set ({len(dataset_train)} images over {args.world_size} processes) is '
                       f'smaller than one batch of {args.batch_size}; lower --batch-size')
    loader_eval = None
    if dataset_eval is not None:
        loader_eval = create_loader(
            dataset_eval, input_size=data_config['input_size'],
            batch_size=args.validation_batch_size or args.batch_size, is_training=False,
            interpolation=data_config['interpolation'], crop_pct=data_config['crop_pct'],
            num_workers=args.workers, **common)
    return loader_train, loader_eval, mixup_fn


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


def main(argv=None):
    args, args_text = parse_args(argv)
    with StopOnSignal() as stop:  # SIGTERM / SIGUSR1: stop at the next step, save, exit 0
        train(args, args_text, stop)


def train(args, args_text: str, stop: StopOnSignal):
    setup_logging(primary=utils.world_info_from_env()[1] == 0)  # torchrun's RANK, or SLURM's / MPI's
    for module in args.device_modules or []:
        importlib.import_module(module)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    args.prefetcher = not args.no_prefetcher
    args.grad_accum_steps = max(1, args.grad_accum_steps)
    args.data_dir = args.data_dir or args.data
    device = setup_device(args)
    primary = utils.is_primary(args)
    utils.random_seed(args.seed, args.rank)

    # Model, data, loss
    model = build_model(args)
    _logger.info(f'Model {args.model} created, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters.')
    data_config = resolve_data_config(vars(args), model=model, verbose=primary)
    model.to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    if args.distributed and args.sync_bn:
        args.dist_bn = ''
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    loader_train, loader_eval, mixup_fn = create_loaders(args, data_config, device)
    for loader in (loader_train, loader_eval):
        stop.protect_loader_workers(loader)
    train_loss_fn = create_train_loss(args).to(device)
    eval_metric = args.eval_metric if loader_eval is not None else 'loss'
    if eval_metric not in ('loss', 'top1', 'top5'):
        raise CLIError(f"--eval-metric must be loss, top1 or top5, got '{args.eval_metric}'")

    # Optimizer, mixed precision, resume, EMA
    resolve_lr(args)
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args), **args.opt_kwargs)
    amp_autocast, loss_scaler = nullcontext, None
    if args.amp:
        if args.amp_dtype not in ('float16', 'bfloat16'):
            raise CLIError(f"--amp-dtype must be float16 or bfloat16, got '{args.amp_dtype}'")
        amp_dtype = getattr(torch, args.amp_dtype)
        amp_autocast = partial(torch.autocast, device_type=device.type, dtype=amp_dtype)
        if amp_dtype == torch.float16:  # bfloat16 has float32's range and needs no loss scaling
            loss_scaler = utils.NativeScaler(device=device.type)
        _logger.info(f'Mixed precision: {args.amp_dtype} autocast{" with grad scaler" if loss_scaler else ""}.')
    run_dir = os.path.join(args.output or './output/train',
                           experiment_name(args, args_text, img_size=data_config['input_size'][-1]))
    checkpoint, start_epoch, resume_path = resume_run(  # every rank reads; nothing is written before this
        args, run_dir, model=model, optimizer=None if args.no_resume_opt else optimizer,
        loss_scaler=None if args.no_resume_opt else loss_scaler, device=device)
    model_ema = None
    if args.model_ema:  # after the resumed weights are in, before compile and DDP
        model_ema = utils.ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                                     device='cpu' if args.model_ema_force_cpu else None)
        if checkpoint is not None:
            load_ema_state(checkpoint, resume_path, model_ema)

    # Compile, DDP
    if args.torchcompile:
        model = torch.compile(model, backend=args.torchcompile, mode=args.torchcompile_mode)
    if args.distributed:
        ddp_kwargs = dict(broadcast_buffers=False) if args.no_ddp_bb else {}  # torch's default: broadcast
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device] if device.type == 'cuda' else None, **ddp_kwargs)
    eval_model = model.module if args.distributed else model

    # LR schedule
    updates_per_epoch = (len(loader_train) + args.grad_accum_steps - 1) // args.grad_accum_steps
    sched_kwargs = scheduler_kwargs(args, decreasing_metric=eval_metric == 'loss')
    lr_scheduler, num_epochs = create_scheduler_v2(optimizer, **sched_kwargs, updates_per_epoch=updates_per_epoch)
    scheduler_config = dict(sched_kwargs, updates_per_epoch=updates_per_epoch)
    restore_scheduler(checkpoint, lr_scheduler, scheduler_config, start_epoch, updates_per_epoch, args.sched_on_updates)

    # Output (rank 0)
    saver, output_dir, summary_path = None, None, None
    if primary:
        output_dir = utils.get_outdir(run_dir)
        with atomic_open(os.path.join(output_dir, 'args.yaml')) as f:
            f.write(args_text)
        summary_path = os.path.join(output_dir, 'summary.csv')
        trim_summary(summary_path, start_epoch)
        saver = CheckpointSaver(
            model=model, optimizer=optimizer, args=args, model_ema=model_ema, amp_scaler=loss_scaler,
            checkpoint_dir=output_dir, recovery_dir=output_dir, decreasing=eval_metric == 'loss',
            max_history=args.checkpoint_hist, lr_scheduler=lr_scheduler, scheduler_config=scheduler_config)
        if checkpoint is not None and checkpoint.get('saver') and hasattr(saver, 'load_state_dict'):
            # best metric and ranked files belong to the checkpoint's folder: a new output folder starts fresh
            if os.path.samefile(os.path.dirname(os.path.abspath(resume_path)), output_dir):
                saver.load_state_dict(checkpoint['saver'])
            else:
                _logger.info(f'Resuming into a new output folder {output_dir}: checkpoint ranking starts fresh.')
        _logger.info(f'Output: {output_dir}. Epochs {start_epoch}..{num_epochs - 1}, {updates_per_epoch} '
                     f'updates of {args.batch_size * args.world_size * args.grad_accum_steps} images each.')
    if start_epoch >= num_epochs:
        _logger.info(f'Nothing to train: the run starts at epoch {start_epoch} and has {num_epochs} epochs.')
    del checkpoint

    # Train
    total_updates = 0
    for epoch in range(start_epoch, num_epochs):
        epoch_start = time.time()
        for obj in (loader_train.dataset, getattr(loader_train, 'sampler', None)):
            if hasattr(obj, 'set_epoch'):
                obj.set_epoch(epoch)
        last = os.path.join(output_dir, 'last.pth.tar') if output_dir else None
        if not primary:
            kept = "rank 0's checkpoints are kept"
        elif os.path.exists(last):
            kept = f'the last good checkpoint {last} is kept; resume from it'
        else:
            kept = 'no checkpoint was written yet'
        train_metrics, updates, stopped = train_one_epoch(
            epoch, model, loader_train, optimizer, train_loss_fn, args, device=device, lr_scheduler=lr_scheduler,
            amp_autocast=amp_autocast, loss_scaler=loss_scaler, model_ema=model_ema, mixup_fn=mixup_fn,
            updates_per_epoch=updates_per_epoch, kept=kept, stop=stop)
        total_updates += updates
        if stopped:  # SIGTERM / SIGUSR1 on some rank: every rank stopped after the same step
            saved = saver.save_preempted(epoch, updates) if saver is not None and updates else 'nothing new'
            _logger.info(f'Stopped by {", ".join(stop.received) or "a signal to another rank"} after {updates} updates '
                         f'of epoch {epoch}; saved: {saved}. Exit status 0; resuming trains epoch {epoch} again.')
            break
        if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
            utils.distribute_bn(model, args.world_size, args.dist_bn == 'reduce')
        train_time = time.time() - epoch_start

        eval_metrics = None
        if loader_eval is not None:
            eval_args = dict(amp_autocast=amp_autocast, channels_last=args.channels_last,
                             log_interval=args.log_interval, verbose=primary, distributed=args.distributed)
            eval_metrics = evaluate(eval_model, loader_eval, device, **eval_args)
            if model_ema is not None and not args.model_ema_force_cpu:
                if args.distributed and args.dist_bn in ('broadcast', 'reduce'):
                    utils.distribute_bn(model_ema, args.world_size, args.dist_bn == 'reduce')
                ema_metrics = evaluate(model_ema.module, loader_eval, device, log_name='Test (EMA)', **eval_args)
                eval_metrics.update((f'ema_{k}', v) for k, v in ema_metrics.items())
        ranked = eval_metrics or train_metrics
        metric = ranked.get(f'ema_{eval_metric}', ranked[eval_metric])
        if not all(math.isfinite(v) for v in [*train_metrics.values(), *(eval_metrics or {}).values()]):
            raise CLIError(f'non-finite metrics after epoch {epoch} ({dict(train_metrics, **(eval_metrics or {}))}): '
                           f'stopped without saving; {kept}. Lower --lr or add --clip-grad')

        lrs = [group['lr'] for group in optimizer.param_groups]
        lr = sum(lrs) / len(lrs)
        if lr_scheduler is not None:
            lr_scheduler.step(epoch + 1, metric)  # before saving: a checkpoint holds the state for the next epoch
        if saver is not None:  # summary row first: a kill between the two is undone by trim_summary on resume
            utils.update_summary(epoch, train_metrics, eval_metrics, filename=summary_path, lr=lr,
                                 write_header=not os.path.exists(summary_path) or os.path.getsize(summary_path) == 0)
            best_metric, best_epoch = saver.save_checkpoint(epoch, metric=metric)
            _logger.info(f'Epoch {epoch} done in {time.time() - epoch_start:.1f}s (train {train_time:.1f}s): '
                         f'{eval_metric} {metric:.4f}, best {best_metric:.4f} (epoch {best_epoch}).')
        if epoch + 1 < num_epochs and stop_agreed(stop, device, args.distributed):  # signal during eval or save
            _logger.info(f'Stopped by {", ".join(stop.received) or "a signal to another rank"} after epoch {epoch} '
                         f'and its checkpoint. Exiting with status 0; a resume continues at epoch {epoch + 1}.')
            break

    # Every rank must have taken the same number of optimizer steps.
    counts = [total_updates]
    if args.distributed:
        gathered = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(args.world_size)]
        dist.all_gather(gathered, torch.tensor([total_updates], dtype=torch.int64, device=device))
        counts = [int(t.item()) for t in gathered]
        dist.destroy_process_group()
    _logger.info(f'Optimizer steps per rank: {counts}')


def train_one_epoch(epoch, model, loader, optimizer, loss_fn, args, *, device, lr_scheduler, amp_autocast,
                    loss_scaler, model_ema, mixup_fn, updates_per_epoch, kept, stop):
    """One pass over ``loader``: (OrderedDict(loss=mean over ranks), optimizer steps taken, stopped early).

    ``stopped``: some rank was asked to stop (``stop``, a StopOnSignal); every rank leaves after the same
    update, and the metrics are None."""
    if args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
        if getattr(loader, 'mixup_enabled', False):
            loader.mixup_enabled = False
        if mixup_fn is not None:
            mixup_fn.mixup_enabled = False
    model.train()
    accum = args.grad_accum_steps
    num_batches = len(loader)
    last_group_start = num_batches - num_batches % accum  # batches from here on form a shorter last group
    clip_params = list(model_parameters(model, exclude_head='agc' in args.clip_mode)) if args.clip_grad else None
    losses = utils.AverageMeter()
    num_updates, updates = epoch * updates_per_epoch, 0
    epoch_start = window_start = time.time()
    window_samples = 0
    optimizer.zero_grad()
    for batch_idx, (input, target) in enumerate(loader):
        need_update = (batch_idx + 1) % accum == 0 or batch_idx == num_batches - 1
        group = accum if batch_idx < last_group_start else num_batches - last_group_start
        input, target = input.to(device, non_blocking=True), target.to(device, non_blocking=True)
        if mixup_fn is not None:
            input, target = mixup_fn(input, target)
        if args.channels_last:
            input = input.contiguous(memory_format=torch.channels_last)

        with model.no_sync() if args.distributed and not need_update else nullcontext():
            with amp_autocast():
                loss = loss_fn(model(input), target)
            # every rank must stop at the same batch: one that raised alone would leave the others in an all-reduce
            flags = torch.stack([(~torch.isfinite(loss.detach())).to(torch.int32), stop.flag(device)])
            if args.distributed:
                dist.all_reduce(flags)  # SUM: ranks with a non-finite loss, ranks asked to stop
            bad, stopping = flags.tolist()
            if stopping and batch_idx % accum == 0:  # at an update boundary: stop before this batch's step
                return None, updates, True
            if bad:
                where = f'on {bad} of {args.world_size} ranks' if args.distributed else f'({loss.item()})'
                raise CLIError(f'non-finite loss {where} at epoch {epoch}, batch {batch_idx}: stopped before '
                               f'this step; {kept}. Lower --lr (or --lr-base), add --clip-grad, or use '
                               f'--amp-dtype bfloat16 instead of float16')
            loss_value = loss.item()
            if loss_scaler is not None:
                loss_scaler(loss / group, optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                            parameters=clip_params, need_update=need_update)
            else:
                (loss / group).backward()
                if need_update:
                    if args.clip_grad is not None:
                        utils.dispatch_clip_grad(clip_params, value=args.clip_grad, mode=args.clip_mode)
                    optimizer.step()
        losses.update(loss_value, input.size(0))
        window_samples += input.size(0) * args.world_size
        if not need_update:
            continue

        optimizer.zero_grad()
        num_updates += 1
        updates += 1
        if model_ema is not None:
            model_ema.update(utils.unwrap_model(model), step=num_updates)
        update_idx = batch_idx // accum
        if update_idx % args.log_interval == 0 or batch_idx == num_batches - 1:
            now = time.time()
            loss_avg = losses.avg
            if args.distributed:
                loss_avg = utils.reduce_tensor(torch.tensor([loss_avg], device=device), args.world_size).item()
            lrs = [g['lr'] for g in optimizer.param_groups]
            eta = (now - epoch_start) / updates * (updates_per_epoch - updates)
            done = 100 * (update_idx + 1) / updates_per_epoch
            _logger.info(
                f'Train: {epoch} [{update_idx:>4d}/{updates_per_epoch} ({done:>3.0f}%)]  '
                f'Loss: {loss_value:#.3g} ({loss_avg:#.3g})  LR: {sum(lrs) / len(lrs):.3e}  '
                f'{window_samples / max(now - window_start, 1e-9):>7.1f} img/s  '
                f'ETA (epoch): {timedelta(seconds=round(eta))}')
            window_start, window_samples = now, 0
        if lr_scheduler is not None:
            lr_scheduler.step_update(num_updates=num_updates, metric=losses.avg)

    loss_avg = losses.avg
    if args.distributed:
        loss_avg = utils.reduce_tensor(torch.tensor([loss_avg], device=device), args.world_size).item()
    return OrderedDict(loss=loss_avg), updates, False


if __name__ == '__main__':
    run_cli(main)
