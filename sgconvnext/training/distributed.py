"""The process side of a training run: logging, device, the torchrun group, and what the ranks agree on.

``setup_distributed`` runs first in ``train_imagenet.py``: timm's ``init_distributed_device`` joins the group
torchrun (or SLURM / MPI) describes in the environment; only global rank 0 logs at INFO level.
"""
import importlib
import logging

import torch
import torch.distributed as dist
from timm import utils

from .config import CLIError

__all__ = ['setup_distributed', 'mean_over_ranks', 'check_step_counts']

_logger = logging.getLogger('train')


def setup_distributed(args) -> torch.device:
    """Logging, --device-modules, the device (cuda when available unless --device says otherwise), the torchrun
    group and the seed."""
    primary = utils.world_info_from_env()[1] == 0  # torchrun's RANK, or SLURM's / MPI's
    handler = logging.StreamHandler()
    handler.setFormatter(utils.FormatterNoInfo())
    logging.basicConfig(level=logging.INFO if primary else logging.WARNING, handlers=[handler], force=True)
    for module in args.device_modules or []:
        importlib.import_module(module)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    args.prefetcher = not args.no_prefetcher
    args.grad_accum_steps = max(1, args.grad_accum_steps)
    args.data_dir = args.data_dir or args.data
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
    utils.random_seed(args.seed, args.rank)
    return device


def mean_over_ranks(value: float, args, device: torch.device) -> float:
    """``value`` averaged over the ranks of the run (itself in a single process)."""
    if not args.distributed:
        return value
    return utils.reduce_tensor(torch.tensor([value], device=device), args.world_size).item()


def check_step_counts(args, device: torch.device, total_updates: int) -> None:
    """Log every rank's optimizer steps (they must be equal) and leave the process group."""
    counts = [total_updates]
    if args.distributed:
        gathered = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(args.world_size)]
        dist.all_gather(gathered, torch.tensor([total_updates], dtype=torch.int64, device=device))
        counts = [int(t.item()) for t in gathered]
        dist.destroy_process_group()
    _logger.info(f'Optimizer steps per rank: {counts}')
