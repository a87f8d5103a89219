"""Training checkpoints: atomic saves, complete resume, one summary row per epoch.

* ``CheckpointSaver`` is timm's (``last``, ``model_best`` and ranked ``checkpoint-N`` files) except
  that a save is written to ``tmp.pth.tar``, fsynced, and renamed over ``last.pth.tar`` in one step
  (``os.replace``): a kill at any moment leaves the previous ``last.pth.tar`` whole. (timm's saver
  deletes ``last.pth.tar`` before the rename.) Checkpoints also hold the LR scheduler state.
* ``resume_training`` restores the model, optimizer, AMP scaler and epoch; ``load_ema_state`` the EMA;
  ``restore_scheduler`` the LR schedule. A checkpoint saved after epoch ``e`` resumes at ``e + 1``.
* ``trim_summary`` drops summary rows of epochs that will be trained again, so a run killed at any
  point and resumed ends with exactly one row per epoch.
"""
import argparse
import csv
import logging
import os

import torch
from timm.models import clean_state_dict
from timm.utils import CheckpointSaver as TimmCheckpointSaver
from timm.utils import get_state_dict, unwrap_model

from ..atomic import atomic_open
from .config import CLIError

__all__ = ['CheckpointSaver', 'load_checkpoint_file', 'load_training_checkpoint', 'resume_training', 'load_ema_state',
           'restore_scheduler', 'trim_summary']

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

    def _save(self, save_path, epoch, metric=None):
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
        if hasattr(self, 'state_dict'):  # ranked-checkpoint bookkeeping (timm >= 1.0.31)
            state['saver'] = self.state_dict(epoch, metric)
        with open(save_path, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())

    def _replace(self, src, dst):
        os.replace(src, dst)  # atomic: dst is the old file or the new one, never missing or partial
        _fsync_dir(os.path.dirname(dst))


def load_checkpoint_file(path: str, flag: str = '--resume'):
    """``torch.load`` of a checkpoint to cpu (tensors, containers and the args Namespace only)."""
    if not os.path.isfile(path):
        raise CLIError(f'{flag} {path} is not a file')
    try:
        if hasattr(torch.serialization, 'safe_globals'):
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(path, map_location='cpu', weights_only=True)
        return torch.load(path, map_location='cpu', weights_only=False)  # torch < 2.5: no safe_globals
    except Exception as e:  # truncated file, not a torch file, unexpected pickled objects, ...
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
