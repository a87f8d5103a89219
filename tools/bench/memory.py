"""Peak memory of one inference or training step, as tools/benchmark.py reports it.

* CUDA: ``torch.cuda.max_memory_allocated`` over the step (after ``reset_peak_memory_stats``): every tensor the
  caching allocator holds at the peak, parameters, gradients and optimizer state included.
* CPU: the same quantity counted by PyTorch's ``MemTracker`` (``torch.distributed._tools.mem_tracker``): the
  bytes of every live tensor storage, parameters, gradients, optimizer state, activations and temporaries, at
  their peak during the step. It does not depend on the allocator (glibc's malloc returns large blocks to the
  OS and keeps small ones, so RSS moves by more than the tensors do) and counts no library-internal buffers
  (oneDNN's or MKL's scratch space). Where MemTracker is missing (torch < 2.5) the value is None.
"""
from typing import Callable, Optional

import torch

__all__ = ['peak_memory_mb']


def peak_memory_mb(step: Callable[[], None], device: torch.device, model=None, optimizer=None) -> Optional[float]:
    """Peak MiB of tensors alive while ``step()`` runs (module docstring); ``model`` and ``optimizer`` are the
    tensors that exist before it (parameters, buffers, optimizer state), counted as MemTracker counts them."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError:
        return None
    tracker = MemTracker()
    tracker.track_external(*[m for m in (model, optimizer) if m is not None])
    with tracker:
        step()
    peak = tracker.get_tracker_snapshot('peak')
    return sum(v.get('Total', 0) for v in peak.values()) / 2 ** 20
