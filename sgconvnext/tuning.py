"""Backends timed on the user's own device: what cuDNN's ``benchmark`` mode does for convolutions, for SGConv2d.

``tune_backends(model, example_input)`` finds every distinct SGConv2d call the model makes on that input (map size,
memory format, compute dtype, training or inference, device: ``sgconv.call_key``), times each exact backend
(``fft``, ``matmul``, ``direct``) on it, forward + backward for training and forward alone for inference, and
fixes the fastest per layer: ``layer.tuned[key] = backend``. Layers set to ``backend="auto"`` then run it for
that call; any other call keeps auto's rules. Nothing is timed during a forward pass, and TorchScript and
torch.compile read the same choices.

The tuner cannot hang on a backend: ``direct`` is not timed where the layer would not run it
(``sgconv.direct_is_safe``), and a backend whose first call does not return within ``time_limit`` seconds is dropped
for that call with a warning (the stalled call is left running on its own thread until the process ends: a C++
call cannot be interrupted). The table names what was not timed and why (``not_timed``).

A table is plain JSON (``save_backend_table``); ``load_backend_table`` applies a saved one when it was made on the
same device with the same torch, and otherwise warns and leaves ``auto`` as it is. Under torch.distributed rank 0
tunes and broadcasts its table, so every rank runs the same backends.
"""
import copy
import json
import logging
import statistics
import threading
import time
import warnings
from contextlib import nullcontext
from typing import Dict, List, Optional

import torch

from .atomic import atomic_open
from .sgconv import DIRECT_MIN_CHANNELS_CPU, EXACT_BACKENDS, SGConv2d, call_key, direct_is_safe
from .runtime import autocast_on
from .toeplitz import is_channels_last

__all__ = ['tune_backends', 'save_backend_table', 'load_backend_table', 'apply_backend_table', 'clear_backends',
           'describe_device', 'format_backend_table']

TABLE_FORMAT = 'sgconvnext-backend-table/2'  # /2: keys name the batch size, layer names have no wrapper prefix
WRAPPER_PREFIXES = ('module.', '_orig_mod.')  # DDP and timm's EMA wrappers, torch.compile
_logger = logging.getLogger(__name__)


def describe_device(device: torch.device) -> str:
    """'cuda: NVIDIA H200' or 'cpu: AMD EPYC 7B13 (2 threads)': what a table's timings hold for."""
    if device.type == 'cuda':
        return f'cuda: {torch.cuda.get_device_name(device)}'
    name = 'unknown CPU'
    try:
        with open('/proc/cpuinfo') as f:
            name = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    return f'{device.type}: {name} ({torch.get_num_threads()} threads)'


def layer_name(name: str) -> str:
    """A module name without the prefixes that wrappers add (``module.``, ``_orig_mod.``): a table made on a wrapped
    model fits the bare model, and the other way round."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix):], True
    return name


def _sgconv_layers(model) -> Dict[str, SGConv2d]:
    layers = {layer_name(name): m for name, m in model.named_modules() if isinstance(m, SGConv2d)}
    if not layers:
        raise ValueError(f'{type(model).__name__} has no SGConv2d layers to tune')
    return layers


def _record_calls(model, example_input: torch.Tensor, train: bool) -> Dict[str, dict]:
    """One forward of ``model`` (train mode with grad, or eval without): layer name -> its call's description."""
    layers = _sgconv_layers(model)
    calls, hooks = {}, []

    def recorder(name):
        def hook(module, args):
            x = args[0]
            dtype = module._compute_dtype(x)
            channels_last = is_channels_last(x)
            calls[name] = dict(key=call_key(x.shape[2], x.shape[3], channels_last, dtype, train, x.device.type,
                                            x.shape[0]), compute_dtype=dtype,
                               shape=tuple(x.shape), channels_last=channels_last, dtype=x.dtype,
                               autocast=getattr(torch, dtype) if autocast_on(x.device.type) else None)
        return hook

    backends = {name: layer.backend for name, layer in layers.items()}
    for name, layer in layers.items():
        hooks.append(layer.register_forward_pre_hook(recorder(name)))
        layer.backend = 'matmul'  # the same function and call sizes, and never a backend that may stall
    was_training = model.training
    try:
        model.train(train)
        with torch.enable_grad() if train else torch.no_grad():
            model(example_input)
    finally:
        model.train(was_training)
        for name, hook in zip(layers, hooks):
            hook.remove()
            layers[name].backend = backends[name]
    return calls


def _time_call(layer: SGConv2d, call: dict, backend: str, train: bool, warmup: int, runs: int,
               time_limit: float) -> Optional[float]:
    """Median seconds of ``backend`` on a copy of ``layer`` for one call (forward + backward when training); None
    when its first call did not return within ``time_limit`` seconds."""
    layer = copy.deepcopy(layer)
    layer.backend = backend
    device = layer.kernel_h.weight.device
    x = torch.randn(call['shape'], device=device, dtype=call['dtype'])
    if call['channels_last']:
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(x)
    x.requires_grad_(train)
    autocast = torch.autocast(device.type, dtype=call['autocast']) if call['autocast'] is not None else nullcontext()

    def step():
        with autocast, torch.enable_grad() if train else torch.no_grad():
            y = layer(x)
        if train:
            y.backward(grad.to(y.dtype))
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    first = _seconds_if_within(step, time_limit)
    if first is None:
        return None
    times = [first] if warmup == 0 else []  # the first call was the first warm-up, or the first run
    for i in range(warmup + runs - 1):
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if i + 1 >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _seconds_if_within(step, limit: float) -> Optional[float]:
    """Run ``step()`` on a thread of its own: the seconds it took, or None when it had not returned within ``limit``
    seconds (then it is left running). Its error is raised here."""
    finished, errors = threading.Event(), []

    def target():
        try:
            step()
        except BaseException as e:  # noqa: B902 - handed to the caller's thread
            errors.append(e)
        finally:
            finished.set()

    start = time.perf_counter()
    threading.Thread(target=target, name='sgconvnext-tune-call', daemon=True).start()
    if not finished.wait(limit):
        return None
    seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    return seconds


def tune_backends(model, example_input: torch.Tensor, modes=('train', 'infer'), warmup: int = 1,
                  runs: int = 3, time_limit: float = 30.0) -> dict:
    """Time every exact backend for each distinct SGConv2d call ``model`` makes on ``example_input`` and fix the
    fastest per layer (module docstring). Run it where the model will run: on its device, in its memory format,
    inside the autocast it will train under. A backend whose first call takes longer than ``time_limit`` seconds is
    dropped for that call. Returns the table (``format_backend_table`` prints it)."""
    if not isinstance(example_input, torch.Tensor) or example_input.dim() != 4:
        raise TypeError(f'example_input must be a (B, C, H, W) tensor, got '
                        f'{tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else type(example_input).__name__}')
    if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)) or not time_limit > 0:
        raise ValueError(f'time_limit must be a positive number of seconds, got {time_limit!r}')
    bad = [m for m in modes if m not in ('train', 'infer')]
    if bad or not modes:
        raise ValueError(f"modes must be 'train' and / or 'infer', got {modes!r}")
    layers = _sgconv_layers(model)
    table = None
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if not distributed or torch.distributed.get_rank() == 0:
        devices = [example_input.device] if example_input.device.type == 'cuda' else []
        with torch.random.fork_rng(devices=devices):  # drop path and the timing inputs draw: leave the RNG as it was
            table = _measure(model, layers, example_input, modes, warmup, runs, time_limit)
    if distributed:  # every rank runs rank 0's choices
        shared = [table]
        torch.distributed.broadcast_object_list(shared, src=0)
        table = shared[0]
    apply_backend_table(model, table)
    return table


def _measure(model, layers, example_input, modes, warmup, runs, time_limit) -> dict:
    device = example_input.device
    timings, timed = [], {}
    explicit = sorted(name for name, layer in layers.items() if layer.backend != 'auto')
    if explicit:
        warnings.warn(f'tune_backends: {len(explicit)} SGConv2d layer(s) have an explicit backend and are not tuned '
                      f'(only backend="auto" reads a tuned choice), e.g. {explicit[0]} '
                      f'(backend={layers[explicit[0]].backend!r})', stacklevel=3)
    for mode in modes:
        for name, call in _record_calls(model, example_input, mode == 'train').items():
            layer = layers[name]
            if layer.backend != 'auto':
                continue
            signature = (call['key'], call['shape'], layer.l_max, layer.bias is not None)
            if signature not in timed:
                timed[signature] = _time_backends(layer, call, mode == 'train', warmup, runs, time_limit)
                timings.append(timed[signature])
            timed[signature]['layers'].append(name)
    return dict(format=TABLE_FORMAT, device=describe_device(device), device_type=device.type,
                torch=torch.__version__, input_shape=list(example_input.shape), time_limit_s=time_limit,
                not_tuned=explicit,
                layers={name: dict(channels=layer.dim, l_max=list(layer.l_max)) for name, layer in layers.items()},
                timings=timings)


def _time_backends(layer: SGConv2d, call: dict, train: bool, warmup: int, runs: int, time_limit: float) -> dict:
    """One timing entry: ms per backend that ran, the fastest (``choice``), and why any other was not timed."""
    not_timed = {}
    if not direct_is_safe(layer.dim, layer.kernel_h.weight.device.type, call['compute_dtype']):
        not_timed['direct'] = f'not run on CPU below {DIRECT_MIN_CHANNELS_CPU} channels (sgconv.direct_is_safe)'
    ms = {}
    for backend in EXACT_BACKENDS:
        if backend in not_timed:
            continue
        seconds = _time_call(layer, call, backend, train, warmup, runs, time_limit)
        if seconds is None:
            not_timed[backend] = f'its first call did not return within {time_limit:g} s'
            warnings.warn(f'tune_backends: {backend} dropped for {call["key"]} (input {tuple(call["shape"])}): '
                          f'{not_timed[backend]}; the call is left running on a thread of its own', stacklevel=4)
        else:
            ms[backend] = 1e3 * seconds
    # None (auto's rules kept) only if every backend was dropped
    entry = dict(key=call['key'], shape=list(call['shape']), ms=ms, choice=min(ms, key=ms.get) if ms else None,
                 layers=[])
    if not_timed:
        entry['not_timed'] = not_timed
    return entry


def apply_backend_table(model, table: dict) -> None:
    """Set each layer's ``tuned`` choices from ``table`` (what ``tune_backends`` returned), replacing earlier ones."""
    layers = _sgconv_layers(model)
    _check_fits(table, layers, 'the table')
    clear_backends(model)
    for entry in table['timings']:
        for name in entry['layers'] if entry['choice'] is not None else []:
            layers[name].tuned[entry['key']] = entry['choice']


def clear_backends(model) -> None:
    """Forget tuned choices: every auto layer goes back to auto's rules."""
    for layer in _sgconv_layers(model).values():
        layer.tuned = {}


def _check_fits(table: dict, layers: Dict[str, SGConv2d], source: str) -> None:
    saved = table['layers']
    ours = {name: dict(channels=layer.dim, l_max=list(layer.l_max)) for name, layer in layers.items()}
    if saved != ours:
        missing = sorted(set(ours) - set(saved))[:2]
        extra = sorted(set(saved) - set(ours))[:2]
        differ = [n for n in ours if n in saved and saved[n] != ours[n]][:2]
        raise ValueError(f'{source} is for another model: its SGConv2d layers differ from this model\'s '
                         f'({len(saved)} layers against {len(ours)}; missing {missing}, unknown {extra}, other '
                         f'channels or l_max {differ})')


def save_backend_table(table: dict, path: str) -> None:
    """Write the table as JSON, whole or not at all."""
    with atomic_open(path) as f:
        json.dump(table, f, indent=1)


def _read_table(path: str) -> dict:
    try:
        with open(path) as f:
            table = json.load(f)
    except OSError as e:
        raise ValueError(f'cannot read backend table {path}: {e.strerror or e}') from None
    except json.JSONDecodeError as e:
        raise ValueError(f'backend table {path} is damaged (not JSON: {e.msg} at line {e.lineno})') from None
    fields = ('format', 'device', 'device_type', 'torch', 'input_shape', 'layers', 'timings')
    if isinstance(table, dict) and str(table.get('format', '')).startswith('sgconvnext-backend-table/') \
            and table.get('format') != TABLE_FORMAT:
        raise ValueError(f'{path} is a backend table of another format ({table["format"]}, this sgconvnext reads '
                         f'{TABLE_FORMAT}): tune again (sgconvnext.tune_backends) and save it anew')
    if not isinstance(table, dict) or table.get('format') != TABLE_FORMAT or any(k not in table for k in fields):
        raise ValueError(f'{path} is not an sgconvnext backend table (expected format {TABLE_FORMAT!r} with '
                         f'{", ".join(fields)})')
    for entry in table['timings']:
        if not isinstance(entry, dict) or not {'key', 'choice', 'layers'} <= set(entry):
            raise ValueError(f'backend table {path} is damaged: a timing lacks key, choice or layers')
        if entry['choice'] not in EXACT_BACKENDS and entry['choice'] is not None:
            raise ValueError(f'backend table {path} names an unknown backend {entry["choice"]!r} for '
                             f'{entry["key"]}; expected one of {", ".join(EXACT_BACKENDS)}')
    return table


def load_backend_table(model, path: str, device: Optional[torch.device] = None,
                       input_shape: Optional[List[int]] = None) -> Optional[dict]:
    """Apply a saved table to ``model``; the table, or None when it was not applied.

    A damaged file, an unknown backend or a table for another model raise ValueError. A table made on another
    device (``device``, default: where the model's parameters are), with another torch, or for another
    ``input_shape`` (when given) is not applied: a warning says why and the layers keep auto's rules."""
    table = _read_table(path)
    layers = _sgconv_layers(model)
    _check_fits(table, layers, f'backend table {path}')
    device = torch.device(device) if device is not None else next(iter(layers.values())).kernel_h.weight.device
    reasons = []
    if table['device'] != describe_device(device):
        reasons.append(f"made on {table['device']}, this is {describe_device(device)}")
    if table['torch'] != torch.__version__:
        reasons.append(f"made with torch {table['torch']}, this is {torch.__version__}")
    if input_shape is not None and list(input_shape) != table['input_shape']:
        reasons.append(f"made for input {tuple(table['input_shape'])}, not {tuple(input_shape)}")
    if reasons:
        warnings.warn(f'backend table {path} not applied ({"; ".join(reasons)}): SGConv2d keeps "auto"; tune again '
                      f'on this machine (sgconvnext.tune_backends)', stacklevel=2)
        clear_backends(model)
        return None
    apply_backend_table(model, table)
    return table


def format_backend_table(table: dict) -> str:
    """Markdown: one row per timed call, ms per backend, the choice, how many layers run it, what was not timed."""
    lines = [f"Backends tuned on {table['device']}, torch {table['torch']}, input {tuple(table['input_shape'])}:", '',
             '| call | input | ' + ' | '.join(f'{b} ms' for b in EXACT_BACKENDS) + ' | choice | layers | not timed |',
             '|---|---|' + '---|' * (len(EXACT_BACKENDS) + 3)]
    for t in table['timings']:
        cells = [f"{t['ms'][b]:.3g}" if b in t.get('ms', {}) else '-' for b in EXACT_BACKENDS]
        not_timed = '; '.join(f'{b}: {why}' for b, why in t.get('not_timed', {}).items())
        lines.append(f"| {t['key']} | {'x'.join(map(str, t['shape']))} | " + ' | '.join(cells)
                     + f" | {t['choice'] or 'auto (nothing timed)'} | {len(t['layers'])} | {not_timed} |")
    return '\n'.join(lines)

