"""Preemption: SIGTERM or SIGUSR1 stops every rank at the same step; the run saves and exits 0.

SLURM (``--signal``, ``scancel``, preemption, ``scontrol requeue``) and Kubernetes send SIGTERM (or the
signal asked for, SIGUSR1 by convention) some time before they kill a job. While ``StopOnSignal`` is
active those signals only set a flag. The training loop reads it at every step boundary, all-reduced
with the non-finite-loss check it already makes, so every rank stops after the same optimizer step even
when the signal reached one rank only. Rank 0 then writes ``last.pth.tar`` (the weights of that step,
marked as the end of the previous epoch: ``--resume auto`` trains the interrupted epoch again) and every
rank exits with status 0. A signal that arrives during evaluation or a save stops the run after that
epoch's checkpoint instead. Further signals while it is saving only set the flag again; the save itself
is atomic (a temporary file renamed over ``last.pth.tar``), so even a SIGKILL leaves a whole checkpoint.

DataLoader workers: torchrun sends a signal to each worker's whole process group (and SLURM may signal
every process of a job step), so loader worker processes get it too. PyTorch's worker handler dies on
SIGTERM, and the trainer then fails with "DataLoader worker exited unexpectedly" before it can save.
``protect_loader_workers`` makes the workers ignore these signals while the trainer is running (the
trainer stops them itself); once it has returned they die on them as before: at interpreter exit
multiprocessing stops leftover workers with SIGTERM and waits for them, which would hang on a worker
that always ignored it. Workers already running when the hook is set keep PyTorch's
handler (a warning says so; timm's loaders, the multi-epochs one included, start them on first use).

torchrun (torch 2.14, measured; docs/training.md "Restarts, preemption, SLURM"): on a signal it handles (SIGTERM by
default) it sends it to every worker's process group, waits up to ``--shutdown-timeout`` (30 s), SIGKILLs
what is left, does not restart them, and exits with status 1 itself even when every worker exited 0.
SIGUSR1 is not in its default ``--signals-to-handle``: add it (``SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1``),
or SIGUSR1 kills torchrun and leaves its workers running.
"""
import ctypes
import logging
import multiprocessing
import signal
import threading

import torch
import torch.distributed as dist

__all__ = ['PREEMPTION_SIGNALS', 'StopOnSignal', 'stop_agreed']

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

_logger = logging.getLogger('train')


class StopOnSignal:
    """``with StopOnSignal() as stop:`` SIGTERM and SIGUSR1 set ``stop.received`` instead of killing the process.

    The previous handlers come back when the block ends. Outside the main thread (where Python cannot
    install signal handlers) it does nothing and ``stop.installed`` is False.
    """

    def __init__(self, signals=PREEMPTION_SIGNALS):
        self.signals = tuple(signals)
        self.received = []  # names of the signals caught, in order
        self.installed = False
        self._previous = {}
        self._active = multiprocessing.RawValue(ctypes.c_bool, False)  # shared with loader workers

    def __enter__(self) -> 'StopOnSignal':
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
            self._active.value = self.installed = True
        return self

    def __exit__(self, *exc_info) -> None:
        self._active.value = False
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        self.installed = False

    def _handle(self, signum, frame) -> None:
        self.received.append(signal.Signals(signum).name)  # nothing else: it may run in the middle of a save

    @property
    def requested(self) -> bool:
        return bool(self.received)

    def flag(self, device) -> torch.Tensor:
        """1 if this rank was asked to stop, as an int32 tensor to all-reduce."""
        return torch.tensor(int(self.requested), dtype=torch.int32, device=device)

    def protect_loader_workers(self, loader) -> None:
        """Make the worker processes of ``loader`` (timm's loader, or the one inside a PrefetchLoader) ignore
        the stop signals while this StopOnSignal is active."""
        torch_loader = getattr(loader, 'loader', loader)
        if getattr(torch_loader, 'num_workers', 0) == 0:
            return
        if getattr(torch_loader, '_iterator', None) or getattr(torch_loader, 'iterator', None):
            _logger.warning('Loader workers started before the trainer could set them up: a SIGTERM or SIGUSR1 '
                            'sent to them stops the run without saving')
            return
        torch_loader.worker_init_fn = _WorkerSignals(self.signals, self._active, torch_loader.worker_init_fn)


class _WorkerSignals:
    """A DataLoader ``worker_init_fn``: the original one, then the stop signals are ignored while the trainer
    is active (``active``, shared memory); afterwards a stop signal kills the worker as before."""

    def __init__(self, signals, active, init_fn=None):
        self.signals, self.active, self.init_fn = signals, active, init_fn

    def __call__(self, worker_id: int) -> None:
        if self.init_fn is not None:
            self.init_fn(worker_id)
        for sig in self.signals:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.active.value:
            return  # the trainer got it too, and stops this worker when it is done
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


def stop_agreed(stop: StopOnSignal, device, distributed: bool) -> bool:
    """True on every rank if any rank was asked to stop (one all-reduce; every rank must call it)."""
    flag = stop.flag(device)
    if distributed:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
