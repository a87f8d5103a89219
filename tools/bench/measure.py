"""What tools/benchmark.py measures without a clock: SGConv2d's backend per stage and the FLOPs (fvcore, FFTs
counted), both as the model runs on the given input: its layout, the caller's autocast, the tuned choices."""
import contextlib

import torch

from sgconvnext import SGConv2d
from sgconvnext.flops import count_activations, count_flops
from sgconvnext.toeplitz import is_channels_last

__all__ = ['auto_backends', 'measure_flops']


def auto_backends(model, x: torch.Tensor, run_context=contextlib.nullcontext):
    """Per stage of SGConv2d layers: map size, the size the kernels were built for, the size policy (how they meet
    another size) and the backend "auto" runs for inference and training, tuned choices included.

    Map sizes, input layouts and compute dtypes come from one forward pass (batch 1, no grad, inside
    ``run_context()``: the timed run's autocast) with pre-hooks on the layers. Returns [] for models without SGConv2d.
    """
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, SGConv2d)]
    if not layers:
        return []
    calls = {}

    def record(name):
        def hook(module, inputs):
            x_in = inputs[0]
            calls.setdefault(name, (*x_in.shape[-2:], is_channels_last(x_in), module._compute_dtype(x_in)))
        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in layers]
    try:
        with torch.no_grad(), run_context():
            model.eval()(x[:1])
    finally:
        for h in hooks:
            h.remove()
    stages = {}
    for name, layer in layers:
        h, w, channels_last, dtype = calls[name]
        stage = name.split('.')[1] if name.startswith('stages.') else name.rsplit('.', 1)[0]
        entry = stages.setdefault(stage, {'stage': stage, 'map': [h, w], 'built': list(layer.l_max),
                                          'resize': layer.resize, 'infer': set(), 'train': set()})
        for mode in ('infer', 'train'):
            entry[mode].add(layer.resolve_backend(h, w, x.device, needs_grad=mode == 'train',
                                                  channels_last=channels_last, dtype=dtype))
    return [dict(e, infer='/'.join(sorted(e['infer'])), train='/'.join(sorted(e['train']))) for e in stages.values()]


def measure_flops(model, x: torch.Tensor) -> dict:
    """Per-image GMACs (inference and training forward), mixer GMACs and activations, at batch 1 (in the autocast
    context of the caller: SGConv2d's tuned choices are per compute dtype)."""
    x1 = x[:1]
    model.eval()
    flops = count_flops(model, x1, grad_enabled=False).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    macs = flops.total()
    mixers = [name for name, _ in model.named_modules() if name.endswith('conv_dw')]
    mixer_macs = sum(flops.total(name) for name in mixers) if mixers else None
    if any(isinstance(m, SGConv2d) for m in model.modules()):  # auto's pick depends on grad mode
        train = count_flops(model, x1, grad_enabled=True).unsupported_ops_warnings(False)
        macs_train = train.uncalled_modules_warnings(False).total()
    else:
        macs_train = macs
    acts = count_activations(model, x1, grad_enabled=False).unsupported_ops_warnings(False)
    acts = acts.uncalled_modules_warnings(False).total()
    return {'gmacs': macs / 1e9, 'gmacs_train': macs_train / 1e9,
            'mixer_gmacs': None if mixer_macs is None else mixer_macs / 1e9, 'activations_m': acts / 1e6}
