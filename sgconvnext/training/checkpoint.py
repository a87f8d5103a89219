"""Training checkpoints: atomic saves, complete resume, one summary row per epoch.

* ``CheckpointSaver`` is timm's (``last``, ``model_best`` and ranked ``checkpoint-N`` files) except
  that a save is written to ``tmp.pth.tar``, fsynced, and renamed over ``last.pth.tar`` in one step
  (``os.replace``): a kill at any moment leaves the previous ``last.pth.tar`` whole. (timm's saver
  deletes ``last.pth.tar`` before the rename.) Checkpoints also hold the LR scheduler state.
* ``resume_training`` restores the model, optimizer, AMP scaler and epoch; ``load_ema_state`` the EMA;
  ``restore_scheduler`` the LR schedule. A checkpoint saved after epoch ``e`` resumes at ``e + 1``.
* ``trim_summary`` drops summary rows of epochs that will be trained again, so a run killed at any
  point and resumed ends with exactly one row per epoch.
* ``--resume auto``: ``find_resume_checkpoint`` picks ``last.pth.tar`` of the run's folder, or, when that
  is damaged or missing, the newest ``checkpoint-N.pth.tar`` that loads (with a warning); ``stable_experiment_name``
  names the folder from the flags when ``--experiment`` is not given, so a restarted job finds it again.
* ``CheckpointSaver.save_preempted`` writes ``last.pth.tar`` in the middle of an epoch (see preemption.py).
"""
import argparse
import contextlib
import csv
import glob
import hashlib
import logging
import os
import pickle
import re
from datetime import datetime

import torch
import torch.distributed as dist
import yaml
from timm.models import clean_state_dict, safe_model_name
from timm.utils import CheckpointSaver as TimmCheckpointSaver
from timm.utils import get_state_dict, unwrap_model

from ..atomic import atomic_open
from .config import CLIError

__all__ = ['CheckpointSaver', 'load_checkpoint_file', 'load_training_checkpoint', 'resume_training', 'load_ema_state',
           'restore_scheduler', 'trim_summary', 'experiment_name', 'stable_experiment_name', 'find_resume_checkpoint',
           'resume_run']

_logger = logging.getLogger('train')


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path or '.', os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CheckpointSaver(TimmCheckpointSaver):
    """timm's CheckpointSaver with atomic, durable writes and the LR scheduler state in each checkpoint."""

    def __init__(self, *args, lr_scheduler=None, scheduler_config=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lr_scheduler = lr_scheduler
        self.scheduler_config = scheduler_config

    def _save(self, save_path, epoch, metric=None, preempted=None):
        state = {
            'epoch': epoch,
            'version': 2,  # resume at epoch + 1
            'arch': self.args.model if self.args is not None else type(unwrap_model(self.model)).__name__,
            'args': self.args,
            'state_dict': get_state_dict(self.model, self.unwrap_fn),
            'optimizer': self.optimizer.state_dict(),
        }
        if self.model_ema is not None:
            state['state_dict_ema'] = get_state_dict(self.model_ema, self.unwrap_fn)
        if self.amp_scaler is not None:
            state[self.amp_scaler.state_dict_key] = self.amp_scaler.state_dict()
        if self.lr_scheduler is not None:
            state['scheduler'] = self.lr_scheduler.state_dict()
            state['scheduler_config'] = self.scheduler_config
        if metric is not None:
            state['metric'] = metric
        if preempted is not None:
            state['preempted'] = preempted
        if hasattr(self, 'state_dict'):  # ranked-checkpoint bookkeeping (timm >= 1.0.31)
            # a preemption save is not ranked: nothing is pending, the history is that of the last epoch
            state['saver'] = self.state_dict() if preempted is not None else self.state_dict(epoch, metric)
        with open(save_path, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())

    def _replace(self, src, dst):
        os.replace(src, dst)  # atomic: dst is the old file or the new one, never missing or partial
        _fsync_dir(os.path.dirname(dst))

    def save_preempted(self, epoch: int, updates: int) -> str:
        """Save the current state to ``last.pth.tar`` only, ``updates`` steps into ``epoch``.

        It is marked as the checkpoint of epoch ``epoch - 1``, so a resume trains ``epoch`` again (from
        these weights, optimizer and EMA state; the LR schedule is set back to the start of ``epoch``). It
        never becomes ``model_best`` or a ranked ``checkpoint-N``: it has no metric.
        """
        tmp = os.path.join(self.checkpoint_dir, 'tmp' + self.extension)
        last = os.path.join(self.checkpoint_dir, 'last' + self.extension)
        self._save(tmp, epoch - 1, preempted=dict(epoch=epoch, updates=updates))
        self._replace(tmp, last)
        return last


def load_checkpoint_file(path: str, flag: str = '--resume'):
    """``torch.load`` of a checkpoint to cpu with ``weights_only`` (tensors, containers and the args Namespace
    only): no code is ever unpickled. torch < 2.5 has no ``safe_globals`` to allow the Namespace, so there a
    checkpoint holding one (a training checkpoint) is refused with a CLIError naming torch >= 2.5."""
    if not os.path.isfile(path):
        raise CLIError(f'{flag} {path} is not a file')
    safe_globals = getattr(torch.serialization, 'safe_globals', None)
    try:
        with safe_globals([argparse.Namespace]) if safe_globals is not None else contextlib.nullcontext():
            return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # truncated file, not a torch file, unexpected pickled objects, ...
        if safe_globals is None and isinstance(e, pickle.UnpicklingError):
            raise CLIError(f'cannot read checkpoint {path} safely with torch {torch.__version__}: it holds objects '
                           f'other than tensors (e.g. a training checkpoint\'s args), which torch >= 2.5 reads '
                           f'without unpickling code; upgrade torch, or pass a plain state dict or a .safetensors '
                           f'file') from None
        raise CLIError(f'cannot read checkpoint {path}: {" ".join(str(e).split())[:300]}') from None


def load_training_checkpoint(path: str) -> dict:
    """A checkpoint written by CheckpointSaver (or timm's train.py), loaded to cpu."""
    checkpoint = load_checkpoint_file(path)
    if not isinstance(checkpoint, dict) or 'state_dict' not in checkpoint:
        raise CLIError(f'{path} is not a training checkpoint (no state_dict); load plain weights with '
                       f'--initial-checkpoint or --pretrained --pretrained-path instead')
    return checkpoint


def _load_weights(module, state_dict, what: str, path: str) -> None:
    try:
        unwrap_model(module).load_state_dict(clean_state_dict(state_dict))
    except (RuntimeError, ValueError) as e:
        first = ' '.join(str(e).split())[:300]
        raise CLIError(f'{what} in {path} do not fit the model ({first}); was it trained with another --model, '
                       f'--num-classes, --img-size or --model-kwargs?') from None


def resume_training(checkpoint: dict, path: str, *, model, model_name: str, optimizer=None, loss_scaler=None) -> int:
    """Load model (and optimizer, scaler) state; return the epoch to start at."""
    arch = checkpoint.get('arch')
    if arch and arch != model_name:
        raise CLIError(f"{path} is a checkpoint of model '{arch}', not '{model_name}'; pass --model {arch}")
    _load_weights(model, checkpoint['state_dict'], 'weights', path)
    if optimizer is not None and 'optimizer' in checkpoint:
        try:
            optimizer.load_state_dict(checkpoint['optimizer'])
        except (ValueError, KeyError) as e:
            raise CLIError(f'optimizer state in {path} does not fit this optimizer ({e}); '
                           f'pass --no-resume-opt to start a fresh one') from None
    if loss_scaler is not None and loss_scaler.state_dict_key in checkpoint:
        loss_scaler.load_state_dict(checkpoint[loss_scaler.state_dict_key])
    epoch = checkpoint.get('epoch', -1)
    start_epoch = epoch + 1 if checkpoint.get('version', 1) > 1 else epoch
    preempted = checkpoint.get('preempted')
    if preempted:
        _logger.info(f"Resumed from {path}, saved {preempted['updates']} updates into epoch {preempted['epoch']} "
                     f"when the run was stopped; epoch {start_epoch} is trained again from those weights")
    else:
        _logger.info(f'Resumed from {path} (epoch {epoch}); continuing at epoch {start_epoch}')
    return start_epoch


def load_ema_state(checkpoint: dict, path: str, model_ema) -> None:
    if checkpoint.get('state_dict_ema') is not None:
        _load_weights(model_ema, checkpoint['state_dict_ema'], 'EMA weights', path)
    else:
        _logger.warning(f'{path} has no EMA weights; the EMA starts from the resumed model weights')


def restore_scheduler(checkpoint, lr_scheduler, scheduler_config: dict, start_epoch: int, updates_per_epoch: int,
                      on_updates: bool) -> None:
    """Restore the scheduler state if it was built with the same flags, then set the LR of ``start_epoch``."""
    if lr_scheduler is None:
        return
    saved = (checkpoint or {}).get('scheduler')
    if saved is not None:
        if checkpoint.get('scheduler_config') == scheduler_config:
            lr_scheduler.load_state_dict(saved)
        else:
            changed = sorted(k for k in scheduler_config
                             if checkpoint.get('scheduler_config', {}).get(k) != scheduler_config[k])
            _logger.warning(f'LR schedule settings changed since the checkpoint ({", ".join(changed)}): '
                            f'the schedule follows the new settings from epoch {start_epoch}')
    if start_epoch > 0:
        if on_updates:
            lr_scheduler.step_update(start_epoch * updates_per_epoch)
        else:
            lr_scheduler.step(start_epoch)


def trim_summary(filename: str, start_epoch: int) -> None:
    """Keep only rows of epochs before ``start_epoch`` (and no partial rows); a fresh run starts a new file."""
    if not os.path.exists(filename):
        return
    with open(filename, newline='') as f:
        rows = list(csv.reader(f))
    header, body = (rows[0], rows[1:]) if rows else ([], [])
    keep = []
    for row in body:
        try:
            if len(row) == len(header) and int(float(row[0])) < start_epoch:
                keep.append(row)
        except ValueError:
            pass
    if len(keep) == len(body):
        return
    _logger.info(f'{filename}: dropping {len(body) - len(keep)} rows of epochs >= {start_epoch} (trained again)')
    if not keep:
        os.remove(filename)
        return
    with atomic_open(filename, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(keep)


# ---------------------------------------------------------------------------- --resume auto

# where a run writes, and how fast (every SGConv2d backend computes the same function), not what it trains
_UNNAMED_FLAGS = ('resume', 'output', 'experiment', 'sg_tune', 'sg_backend_table')


def experiment_name(args, args_text: str, img_size: int) -> str:
    """--experiment; else DATE-MODEL-SIZE as in timm, or with --resume auto ``stable_experiment_name``."""
    if args.experiment:
        return args.experiment
    if args.resume == 'auto':
        return stable_experiment_name(args_text, args.model, img_size)
    return '-'.join([datetime.now().strftime('%Y%m%d-%H%M%S'), safe_model_name(args.model), str(img_size)])


def stable_experiment_name(args_text: str, model: str, img_size: int) -> str:
    """``MODEL-SIZE-HASH``: HASH is 8 hex digits of every flag except --resume, --output and --experiment.

    ``args_text`` is the YAML of the parsed flags (config values included), so the same command, with the
    same config file contents, names the same folder on every restart and every rank.
    """
    flags = {k: v for k, v in yaml.safe_load(args_text).items() if k not in _UNNAMED_FLAGS}
    digest = hashlib.sha256(yaml.safe_dump(flags, sort_keys=True).encode()).hexdigest()[:8]
    return f'{safe_model_name(model)}-{img_size}-{digest}'


def _ranked_checkpoints(run_dir: str):
    """``checkpoint-N.pth.tar`` files of ``run_dir``, newest epoch first."""
    found = []
    for path in glob.glob(os.path.join(glob.escape(run_dir), 'checkpoint-*.pth.tar')):
        match = re.fullmatch(r'checkpoint-(\d+)\.pth\.tar', os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found, reverse=True)]


def _load_if_whole(path: str):
    """(checkpoint, None), or (None, what is wrong with the file)."""
    try:
        checkpoint = load_checkpoint_file(path)
    except CLIError as e:
        return None, str(e)
    if not isinstance(checkpoint, dict) or 'state_dict' not in checkpoint:
        return None, f'{path} is not a training checkpoint (no state_dict)'
    return checkpoint, None


def find_resume_checkpoint(run_dir: str):
    """(path, checkpoint) for ``--resume auto`` in ``run_dir``, or (None, None) to start fresh.

    ``last.pth.tar`` when it loads. If it is damaged (truncated, not a checkpoint) or missing while
    ranked ``checkpoint-N.pth.tar`` files are there, the newest of those that loads, with a warning (the
    epochs after it are trained again). Nothing to fall back to is a CLIError naming the file. Only reads.
    """
    last = os.path.join(run_dir, 'last.pth.tar')
    ranked = _ranked_checkpoints(run_dir)
    if not os.path.exists(last) and not ranked:
        return None, None
    problem = f'{last} is missing'
    if os.path.exists(last):
        checkpoint, problem = _load_if_whole(last)
        if checkpoint is not None:
            return last, checkpoint
    for path in ranked:
        checkpoint, skipped = _load_if_whole(path)
        if checkpoint is None:
            _logger.warning(f'--resume auto: skipping {path}: {skipped}')
            continue
        _logger.warning(f'--resume auto: {problem}; falling back to {path} (epoch {checkpoint.get("epoch")}), '
                        f'the newest checkpoint that loads: the epochs after it are trained again')
        return path, checkpoint
    fallback = (f'none of the {len(ranked)} checkpoint-N.pth.tar in {run_dir} loads either' if ranked
                else f'{run_dir} has no checkpoint-N.pth.tar to fall back to')
    raise CLIError(f'--resume auto: {problem}, and {fallback}. Move {last} away to start this run fresh, '
                   f'or --resume a good checkpoint')


def resume_run(args, run_dir: str, *, model, optimizer, loss_scaler, device):
    """(checkpoint or None, start epoch, its path) for --resume PATH, --resume auto (in ``run_dir``) or neither.

    Loads the model, optimizer and scaler state (pass None for those not to resume); --start-epoch wins.
    """
    checkpoint, start_epoch, path = None, 0, args.resume
    if args.resume == 'auto':
        path, checkpoint = find_resume_checkpoint(run_dir)
        _logger.info(f'--resume auto: {"resuming from " + path if checkpoint else "starting fresh"} in {run_dir}')
    elif args.resume:
        checkpoint = load_training_checkpoint(args.resume)
    if checkpoint is not None:
        start_epoch = resume_training(checkpoint, path, model=model, model_name=args.model, optimizer=optimizer,
                                      loss_scaler=loss_scaler)
    if args.start_epoch is not None:
        start_epoch = args.start_epoch
    if args.distributed and args.resume == 'auto':
        _check_start_epoch_agrees(start_epoch, run_dir, device, args.world_size)
    return checkpoint, start_epoch, path


def _check_start_epoch_agrees(start_epoch: int, run_dir: str, device, world_size: int) -> None:
    """Every rank must resume at the same epoch (they read the same files); a CLIError on every rank if not."""
    gathered = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world_size)]
    dist.all_gather(gathered, torch.tensor([start_epoch], dtype=torch.int64, device=device))
    epochs = [int(t.item()) for t in gathered]
    if len(set(epochs)) > 1:
        raise CLIError(f'--resume auto: the ranks would start at different epochs ({epochs}, by rank): {run_dir} '
                       f'must be one folder that every node sees (a shared filesystem)')
