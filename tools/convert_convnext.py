#!/usr/bin/env python3
"""Convert a ConvNeXt checkpoint into an SGConvNeXt one: each 7x7 depthwise kernel becomes its SGConv2d.

    python tools/convert_convnext.py convnext_tiny.pth sgconvnext_tiny.pth --model sgconvnext_tiny
    python tools/convert_convnext.py convnext_tiny.safetensors sgconvnext_tiny_384.safetensors \\
        --model sgconvnext_tiny --img-size 384 --model-kwargs sg_kernel_dim=8

IN: a state dict of the ConvNeXt of the same size (timm's or facebookresearch's layout), as ``.pth`` /
``.pth.tar`` / ``.bin`` (loaded with ``weights_only``: no code is unpickled; torch < 2.5 reads plain state
dicts only) or ``.safetensors``. From a training checkpoint the tool takes the weights timm's
``--pretrained-path`` takes: the EMA weights (``state_dict_ema``, else ``model_ema``) when it has them, else
``state_dict`` / ``model``; it prints which. OUT: the SGConvNeXt state dict, geometry included, as ``.pth`` or
``.safetensors`` (by its extension), written whole or not at all. It loads like any SGConvNeXt checkpoint:
``timm.create_model(MODEL, pretrained=True, pretrained_cfg_overlay=dict(file=OUT))``.

--img-size is the input size the kernels are built for (default 224): a layer at map size L holds taps out to
L - 1 pixels. --convert none writes today's warm start instead (the SGConv kernels at their seeded init).
The conversion is sgconvnext.convert_convnext (sgconvnext/convert.py explains the rank-1 fit).
"""
import os
import sys

import torch
from timm.models import clean_state_dict
from timm.utils import ParseKwargs

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout: no pip install needed
import timm  # noqa: E402
import sgconvnext  # noqa: E402,F401  (registers sgconvnext_* with timm)
from sgconvnext.atomic import atomic_open  # noqa: E402
from sgconvnext.cli import CLIError, OneLineErrorParser, run_cli  # noqa: E402
from sgconvnext.convert import CONVERSIONS, convert_convnext  # noqa: E402
from sgconvnext.training.checkpoint import load_checkpoint_file  # noqa: E402
from sgconvnext.training.model import check_model_name, is_sgconvnext  # noqa: E402

FORMATS = ('.pth', '.safetensors')
WEIGHT_KEYS = ('state_dict_ema', 'model_ema', 'state_dict', 'model')  # timm's load_state_dict order (EMA first)


def parse_args(argv=None):
    p = OneLineErrorParser(description=__doc__.split('\n\n')[0])
    p.add_argument('input', metavar='IN', help='ConvNeXt checkpoint (.pth, .pth.tar, .bin or .safetensors)')
    p.add_argument('output', metavar='OUT', help='SGConvNeXt checkpoint to write (.pth or .safetensors)')
    p.add_argument('--model', required=True, help='the sgconvnext model of the same size, e.g. sgconvnext_tiny')
    p.add_argument('--img-size', type=int, default=224, help='input size the kernels are built for (default: 224)')
    p.add_argument('--convert', default='rank1', help=f'{" or ".join(CONVERSIONS)} (default: rank1)')
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs, help='more create_model kwargs')
    p.add_argument('--seed', type=int, default=0, help='seed of the model init (what --convert none keeps)')
    return p.parse_args(argv)


def read_state_dict(path: str):
    """(the state dict in ``path``, the checkpoint entry it came from or None for a plain state dict)."""
    if path.endswith('.safetensors'):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        if not os.path.isfile(path):
            raise CLIError(f'{path} is not a file')
        try:
            return load_file(path), None
        except (SafetensorError, OSError) as e:
            raise CLIError(f'{path} is not a readable safetensors file ({" ".join(str(e).split())[:200]})') from None
    checkpoint = load_checkpoint_file(path, flag='IN')
    if not isinstance(checkpoint, dict):
        raise CLIError(f'{path} holds a {type(checkpoint).__name__}, not a state dict')
    for key in WEIGHT_KEYS:
        if isinstance(checkpoint.get(key), dict):
            return clean_state_dict(checkpoint[key]), key
    return clean_state_dict(checkpoint), None


def write_state_dict(state_dict: dict, path: str) -> None:
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}  # no shared storage
    if path.endswith('.safetensors'):
        from safetensors.torch import save
        data = save(tensors)
        with atomic_open(path, 'wb') as f:
            f.write(data)
    else:
        with atomic_open(path, 'wb') as f:
            torch.save(tensors, f)


def main(argv=None):
    args = parse_args(argv)
    if not args.output.endswith(FORMATS):
        raise CLIError(f'OUT must end in {" or ".join(FORMATS)}, got {args.output}')
    check_model_name(args.model)
    if not is_sgconvnext(args.model):
        raise CLIError(f'--model must be an sgconvnext model (the target of the conversion), got {args.model}')
    state_dict, entry = read_state_dict(args.input)
    head = state_dict.get('head.fc.weight', state_dict.get('head.weight'))
    kwargs = dict(num_classes=head.shape[0]) if isinstance(head, torch.Tensor) and head.dim() == 2 else {}
    torch.manual_seed(args.seed)
    try:
        model = timm.create_model(args.model, img_size=args.img_size, sg_convert=args.convert,
                                  **{**kwargs, **args.model_kwargs})
        converted = convert_convnext(state_dict, model, args.convert)
        model.load_state_dict(converted)  # the result must load whole
    except (TypeError, ValueError, RuntimeError) as e:
        raise CLIError(f'cannot convert {args.input} into {args.model}: {" ".join(str(e).split())[:600]}') from None
    write_state_dict(converted, args.output)
    source = f' from its {entry}' if entry else ''
    print(f'wrote {args.output}: {len(converted)} tensors for {args.model} built for {args.img_size} px '
          f'(sg_convert={args.convert}){source}')
    return converted


if __name__ == '__main__':
    import logging
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    run_cli(main)
