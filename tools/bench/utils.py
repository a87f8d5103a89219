"""Shared pieces of the benchmark scripts: interleaved timing, machine description, report sections."""
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict

import timm
import torch

from sgconvnext.atomic import atomic_open


def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def interleaved_medians(fns: Dict[str, Callable[[], object]], device: torch.device, warmup: int = 2,
                        runs: int = 5) -> Dict[str, float]:
    """Median seconds per call of each fn, timed round-robin so drifts in machine load hit all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    synchronize(device)
    times = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def describe_machine(device: torch.device) -> str:
    if device.type == 'cuda':
        return f'{torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA {torch.version.cuda}'
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    # glibc's malloc settings change CPU timings a lot (large tensors are mmap'd and page-faulted afresh).
    allocator = ', '.join(f'{k}={v}' for k, v in sorted(os.environ.items())
                          if k.startswith('MALLOC_') or k == 'LD_PRELOAD') or 'default malloc settings'
    return (f'{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, '
            f'Python {platform.python_version()}, {allocator}')


def command_line() -> str:
    return 'python ' + ' '.join([os.path.relpath(sys.argv[0])] + sys.argv[1:])


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def write_section(path: str, key: str, text: str) -> None:
    """Replace the text between ``<!-- key:start -->`` and ``<!-- key:end -->`` in ``path`` (append if absent).

    Written to a temporary file and renamed, so an interrupted run never leaves a half-written report.
    """
    start, end = f'<!-- {key}:start -->', f'<!-- {key}:end -->'
    old = open(path).read() if os.path.exists(path) else '# Benchmarks\n'
    block = f'{start}\n{text.rstrip()}\n{end}'
    if start in old and end in old:
        new = old[:old.index(start)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + '\n\n' + block + '\n'
    with atomic_open(path) as f:
        f.write(new)


def git_revision() -> str:
    try:
        return subprocess.check_output(['git', 'rev-parse', '--short', 'HEAD'], stderr=subprocess.DEVNULL,
                                       text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'


def create_model_for_size(name: str, img_size: int, **kwargs):
    """timm model ``name``, built for ``img_size`` when it takes that argument (SGConvNeXt, ViTs)."""
    try:
        return timm.create_model(name, img_size=img_size, **kwargs)
    except TypeError as e:
        if 'img_size' not in str(e):
            raise
        return timm.create_model(name, **kwargs)


def split_model_entry(entry: str):
    """'name:k=v,k2=v2' -> ('name', ['k=v', 'k2=v2']); 'name' -> ('name', []). ValueError on a malformed entry."""
    name, colon, kwargs = entry.partition(':')
    pairs = [kv for kv in kwargs.split(',') if kv]
    if colon and not pairs:
        raise ValueError(f'nothing after ":" in {entry!r}; give NAME or NAME:KEY=VALUE,...')
    bad = [kv for kv in pairs if not kv.partition('=')[0].isidentifier() or '=' not in kv]
    if bad:
        raise ValueError(f'model kwargs are KEY=VALUE pairs, got {bad[0]!r} in {entry!r}')
    return name, pairs
