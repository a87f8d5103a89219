"""Top-1 / top-5 evaluation over a loader, exact under DDP.

timm's distributed eval sampler pads the dataset so every rank gets the same number of samples; here
each rank drops its padded tail and the sums (samples, loss, top-1 and top-5 hits) are all-reduced, so
a distributed evaluation gives the same numbers as a single-process one.
"""
import logging
import time
from collections import OrderedDict
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.data.distributed_sampler import OrderedDistributedSampler
from timm.utils import AverageMeter, accuracy

__all__ = ['evaluate', 'valid_samples']

_logger = logging.getLogger('train')


def valid_samples(loader):
    """Samples of this rank that are not distributed-sampler padding (None: no padding)."""
    sampler = getattr(loader, 'sampler', None)
    if isinstance(sampler, OrderedDistributedSampler):  # rank r gets indices r, r + world, ... then padding
        return len(range(sampler.rank, len(sampler.dataset), sampler.num_replicas))
    return None


@torch.inference_mode()
def evaluate(model, loader, device, *, amp_autocast=nullcontext, channels_last=False, log_interval=50,
             log_name='Test', verbose=True, distributed=False):
    """OrderedDict(loss, top1, top5) of ``model`` over ``loader``; top-k in percent."""
    model.eval()
    limit = valid_samples(loader)
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # samples, loss sum, top-1 hits, top-5 hits
    seen = 0
    batch_time = AverageMeter()
    end = time.time()
    last_idx = len(loader) - 1
    for batch_idx, (input, target) in enumerate(loader):
        input, target = input.to(device, non_blocking=True), target.to(device, non_blocking=True)
        if channels_last:
            input = input.contiguous(memory_format=torch.channels_last)
        with amp_autocast():
            output = model(input)
        if isinstance(output, (tuple, list)):
            output = output[0]
        output = output.float()
        if limit is not None:
            keep = max(0, limit - seen)
            output, target = output[:keep], target[:keep]
        n = target.shape[0]
        seen += n
        if n:
            acc1, acc5 = accuracy(output, target, topk=(1, 5))
            loss = F.cross_entropy(output, target, reduction='sum')
            hits1, hits5 = acc1.double() * n / 100, acc5.double() * n / 100  # accuracy() gives percentages
            totals += torch.stack([totals.new_tensor(n), loss.double(), hits1, hits5])
        batch_time.update(time.time() - end)
        end = time.time()
        if verbose and (batch_idx % log_interval == 0 or batch_idx == last_idx):
            count = max(totals[0].item(), 1)
            _logger.info(
                f'{log_name}: [{batch_idx:>4d}/{last_idx}]  Time: {batch_time.val:.3f} ({batch_time.avg:.3f})  '
                f'Loss: {totals[1].item() / count:>6.3f}  Acc@1: {100 * totals[2].item() / count:>7.3f}  '
                f'Acc@5: {100 * totals[3].item() / count:>7.3f}')
    if distributed:
        dist.all_reduce(totals)
    count, loss_sum, top1, top5 = totals.tolist()
    count = max(count, 1)
    return OrderedDict(loss=loss_sum / count, top1=100 * top1 / count, top5=100 * top5 / count)
