"""The command line of ``train_imagenet.py``: timm ``train.py`` flags, YAML configs, one-line errors.

A config file (``-c FILE``) sets defaults; flags on the command line win over it. Every YAML key must be
a flag's name with underscores (``lr_base``, ``model_ema_decay``), exactly as in timm's configs and in
the ``args.yaml`` a run writes, so a run's ``args.yaml`` is itself a valid config. A key that is not a
flag, or a value of the wrong type, is an error naming it.

Every flag has the name, default and meaning of the same flag in timm's ``train.py``, except the
default of ``--device``: None picks cuda when it is available, else cpu (timm: cuda). timm flags that
are not here (torchscript, naflex, distillation, wandb, ...) are not supported.

Problems the user can fix raise ``CLIError``; ``run_cli`` turns one into a single ``error:`` line.
"""
import argparse
import difflib
import os

import yaml
from timm.utils import ParseKwargs

from ..cli import CLIError, OneLineErrorParser, run_cli

__all__ = ['CLIError', 'run_cli', 'build_parser', 'parse_args', 'load_config']


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(description='Train an ImageNet classifier (SGConvNeXt or any timm model), timm style.')
    add = parser.add_argument
    parser.add_argument('-c', '--config', default='', metavar='FILE',
                        help='YAML file of flag defaults (keys = flag names with underscores); flags win over it')

    # Dataset
    add('data', nargs='?', metavar='DIR', help='path to dataset (positional is deprecated, use --data-dir)')
    add('--data-dir', metavar='DIR', help='dataset root; an image folder needs train/ and val/ class folders')
    add('--dataset', default='', metavar='NAME',
        help='dataset type + name ("<type>/<name>", e.g. torch/cifar10, hfds/..., wds/...); empty: folder or tar')
    add('--train-split', default='train', metavar='NAME', help='dataset train split (default: train)')
    add('--val-split', default='validation', metavar='NAME',
        help='dataset validation split (default: validation, which finds val/ too); empty: no validation')
    add('--train-num-samples', type=int, default=None, metavar='N', help='samples in train split (IterableDatasets)')
    add('--val-num-samples', type=int, default=None, metavar='N', help='samples in val split (IterableDatasets)')
    add('--dataset-download', action='store_true', default=False, help='allow download of torch/ and tfds/ datasets')
    add('--class-map', default='', metavar='FILENAME', help='path to class to idx mapping file')
    add('--input-img-mode', default=None, help='dataset image conversion mode for input images')
    add('--input-key', default=None, help='dataset key for input images')
    add('--target-key', default=None, help='dataset key for target labels')
    add('--dataset-trust-remote-code', action='store_true', default=False,
        help='allow a Hugging Face dataset to run code from its repository')

    # Model
    add('--model', default='resnet50', metavar='MODEL', help='name of the timm model to train (default: resnet50)')
    add('--pretrained', action='store_true', default=False, help='start from pretrained weights')
    add('--pretrained-path', default=None, metavar='PATH',
        help='load this file as the pretrained weights (with adaptation); e.g. convnext_tiny weights for '
             'sgconvnext_tiny: a warm start that keeps the SGConv kernels at init')
    add('--initial-checkpoint', default='', metavar='PATH', help='load this checkpoint into the model after init')
    add('--resume', default='', metavar='PATH',
        help='resume model, optimizer, scaler, EMA, LR schedule and epoch from PATH; auto: from the run\'s '
             'last.pth.tar if it exists, else start fresh (without --experiment the run is named from its flags)')
    add('--no-resume-opt', action='store_true', default=False, help='do not resume optimizer / scaler state')
    add('--num-classes', type=int, default=None, metavar='N', help='number of classes (model default if None)')
    add('--gp', default=None, metavar='POOL', help='global pool type (model default if None)')
    add('--img-size', type=int, default=None, metavar='N', help='image size (model default if None)')
    add('--in-chans', type=int, default=None, metavar='N', help='image input channels (default: 3)')
    add('--input-size', type=int, nargs=3, default=None, metavar='N', help='input dims (d h w, e.g. 3 224 224)')
    add('--crop-pct', type=float, default=None, metavar='N', help='center crop percent (validation only)')
    add('--mean', type=float, nargs='+', default=None, metavar='MEAN', help='override dataset mean')
    add('--std', type=float, nargs='+', default=None, metavar='STD', help='override dataset std')
    add('--interpolation', default='', metavar='NAME', help='image resize interpolation (overrides model)')
    add('-b', '--batch-size', type=int, default=128, metavar='N', help='batch size per process (default: 128)')
    add('-vb', '--validation-batch-size', type=int, default=None, metavar='N', help='validation batch size')
    add('--channels-last', action='store_true', default=False, help='use channels_last memory layout')
    add('--grad-accum-steps', type=int, default=1, metavar='N', help='steps to accumulate gradients (default: 1)')
    add('--grad-checkpointing', action='store_true', default=False, help='gradient checkpointing of model stages')
    add('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
        help='extra model kwargs, key=value (sgconvnext: img_size, sg_kernel_dim, sg_decay, sg_backend, sg_resize)')
    add('--head-init-scale', type=float, default=None, help='head initialization scale')
    add('--head-init-bias', type=float, default=None, help='head initialization bias value')
    add('--torchcompile', nargs='?', type=str, default=None, const='inductor',
        help='torch.compile with this backend (default when given: inductor)')
    add('--torchcompile-mode', type=str, default=None, help='torch.compile mode (default: None)')
    add('--sg-tune', action='store_true', default=False,
        help='sgconvnext: time SGConv2d\'s backends on this device for the training input and keep the fastest')
    add('--sg-backend-table', default=None, metavar='PATH',
        help='sgconvnext: apply a backend table saved by sgconvnext.save_backend_table (instead of --sg-tune)')

    # Device and distributed
    add('--device', default=None,
        help='device: cuda when available, else cpu (timm: cuda); torchrun gives each process its own GPU')
    add('--amp', action='store_true', default=False, help='mixed precision (autocast)')
    add('--amp-dtype', default='float16', help='AMP dtype: float16 (with grad scaler) or bfloat16')
    add('--no-ddp-bb', action='store_true', default=False, help='DDP without broadcast_buffers')
    add('--local_rank', '--local-rank', type=int, default=0, help='set by torch.distributed.launch; torchrun uses env')
    add('--device-modules', nargs='+', default=None, help='Python modules to import for the device backend')

    # Optimizer
    add('--opt', default='sgd', metavar='OPTIMIZER', help='optimizer (default: sgd)')
    add('--opt-eps', type=float, default=None, metavar='EPSILON', help='optimizer epsilon')
    add('--opt-betas', type=float, nargs='+', default=None, metavar='BETA', help='optimizer betas')
    add('--momentum', type=float, default=0.9, metavar='M', help='optimizer momentum (default: 0.9)')
    add('--weight-decay', type=float, default=2e-5, help='weight decay (default: 2e-5)')
    add('--clip-grad', type=float, default=None, metavar='NORM', help='clip gradient norm (default: no clipping)')
    add('--clip-mode', default='norm', help='gradient clipping mode: norm, value or agc')
    add('--layer-decay', type=float, default=None, help='layer-wise learning rate decay')
    add('--sg-kernel-lr-scale', type=float, default=1.0, metavar='S',
        help='sgconvnext: the SGConv kernel parameters learn at S x the LR (SGConv / S4 give the kernel its own LR; '
             'default: 1)')
    add('--opt-kwargs', nargs='*', default={}, action=ParseKwargs, help='extra optimizer kwargs, key=value')

    # Learning rate schedule
    add('--sched', default='cosine', metavar='SCHEDULER', help='LR scheduler (default: cosine)')
    add('--sched-on-updates', action='store_true', default=False, help='step the LR per update, not per epoch')
    add('--lr', type=float, default=None, metavar='LR', help='learning rate; overrides --lr-base if set')
    add('--lr-base', type=float, default=0.1, metavar='LR',
        help='base learning rate: lr = lr_base * global_batch_size / lr_base_size (or its sqrt)')
    add('--lr-base-size', type=int, default=256, metavar='DIV', help='batch size of --lr-base (default: 256)')
    add('--lr-base-scale', default='', metavar='SCALE',
        help='lr vs batch size scaling: linear or sqrt (empty: sqrt for ada*/lamb optimizers, else linear)')
    add('--lr-noise', type=float, nargs='+', default=None, metavar='pct, pct', help='LR noise on/off epoch pcts')
    add('--lr-noise-pct', type=float, default=0.67, metavar='PERCENT', help='LR noise limit percent')
    add('--lr-noise-std', type=float, default=1.0, metavar='STDDEV', help='LR noise std-dev')
    add('--lr-cycle-mul', type=float, default=1.0, metavar='MULT', help='LR cycle length multiplier')
    add('--lr-cycle-decay', type=float, default=0.5, metavar='MULT', help='decay of each LR cycle')
    add('--lr-cycle-limit', type=int, default=1, metavar='N', help='LR cycle limit, cycles enabled if > 1')
    add('--lr-k-decay', type=float, default=1.0, help='LR k-decay for cosine/poly')
    add('--warmup-lr', type=float, default=1e-5, metavar='LR', help='warmup learning rate (default: 1e-5)')
    add('--min-lr', type=float, default=0, metavar='LR', help='lower LR bound of cyclic schedules (default: 0)')
    add('--epochs', type=int, default=300, metavar='N', help='epochs to train (default: 300)')
    add('--epoch-repeats', type=float, default=0., metavar='N', help='dataset repeats per epoch')
    add('--start-epoch', type=int, default=None, metavar='N', help='manual start epoch (overrides --resume\'s)')
    add('--decay-milestones', type=int, nargs='+', default=[90, 180, 270], metavar='MILESTONES',
        help='epochs of multistep LR decay')
    add('--decay-epochs', type=float, default=90, metavar='N', help='epoch interval of step LR decay')
    add('--warmup-epochs', type=int, default=5, metavar='N', help='epochs of LR warmup (default: 5)')
    add('--warmup-prefix', action='store_true', default=False, help='exclude warmup from the decay schedule')
    add('--cooldown-epochs', type=int, default=0, metavar='N', help='epochs at min_lr after the schedule')
    add('--patience-epochs', type=int, default=10, metavar='N', help='patience of the plateau scheduler')
    add('--decay-rate', '--dr', type=float, default=0.1, metavar='RATE', help='LR decay rate (default: 0.1)')

    # Augmentation and regularization
    add('--no-aug', action='store_true', default=False, help='disable all training augmentation')
    add('--train-crop-mode', default=None, help='training crop mode')
    add('--scale', type=float, nargs='+', default=[0.08, 1.0], metavar='PCT', help='random resize scale')
    add('--ratio', type=float, nargs='+', default=[3. / 4., 4. / 3.], metavar='RATIO', help='random resize ratio')
    add('--hflip', type=float, default=0.5, help='horizontal flip probability')
    add('--vflip', type=float, default=0., help='vertical flip probability')
    add('--color-jitter', type=float, default=0.4, metavar='PCT', help='color jitter factor (default: 0.4)')
    add('--aa', default=None, metavar='NAME', help='AutoAugment / RandAugment policy, e.g. rand-m9-mstd0.5-inc1')
    add('--aug-repeats', type=float, default=0, help='augmentation repetitions (distributed only)')
    add('--bce-loss', action='store_true', default=False, help='binary cross-entropy loss')
    add('--bce-target-thresh', type=float, default=None, help='binarize soft BCE targets above this')
    add('--reprob', type=float, default=0., metavar='PCT', help='random erase probability (default: 0)')
    add('--remode', default='pixel', help='random erase mode (default: pixel)')
    add('--recount', type=int, default=1, help='random erase count')
    add('--resplit', action='store_true', default=False, help='do not random erase the first (clean) split')
    add('--mixup', type=float, default=0.0, help='mixup alpha, enabled if > 0')
    add('--cutmix', type=float, default=0.0, help='cutmix alpha, enabled if > 0')
    add('--cutmix-minmax', type=float, nargs='+', default=None, help='cutmix min/max ratio (overrides alpha)')
    add('--mixup-prob', type=float, default=1.0, help='probability of mixup or cutmix per batch')
    add('--mixup-switch-prob', type=float, default=0.5, help='probability of cutmix when both are enabled')
    add('--mixup-mode', default='batch', help='mixup/cutmix params per batch, pair or elem')
    add('--mixup-off-epoch', type=int, default=0, metavar='N', help='turn mixup off from this epoch (0: never)')
    add('--smoothing', type=float, default=0.1, help='label smoothing (default: 0.1)')
    add('--train-interpolation', default='random', help='training interpolation: random, bilinear, bicubic')
    add('--drop', type=float, default=0.0, metavar='PCT', help='dropout rate (default: 0)')
    add('--drop-path', type=float, default=None, metavar='PCT', help='drop path (stochastic depth) rate')
    add('--drop-block', type=float, default=None, metavar='PCT', help='drop block rate')

    # Batch norm (for timm's BN models; ConvNeXt has none)
    add('--bn-momentum', type=float, default=None, help='BatchNorm momentum override')
    add('--bn-eps', type=float, default=None, help='BatchNorm epsilon override')
    add('--sync-bn', action='store_true', help='synchronized BatchNorm')
    add('--dist-bn', default='reduce',
        help='BatchNorm stats across processes after each epoch: broadcast, reduce or ""')

    # Model EMA
    add('--model-ema', action='store_true', default=False, help='track an EMA of the model weights')
    add('--model-ema-force-cpu', action='store_true', default=False, help='keep the EMA on cpu, no EMA validation')
    add('--model-ema-decay', type=float, default=0.9998, help='EMA decay (default: 0.9998)')
    add('--model-ema-warmup', action='store_true', help='EMA decay warmup')

    # Misc
    add('--seed', type=int, default=42, metavar='S', help='random seed (default: 42)')
    add('--worker-seeding', default='all', help='worker seed mode (default: all)')
    add('--log-interval', type=int, default=50, metavar='N', help='updates between progress lines (default: 50)')
    add('--checkpoint-hist', type=int, default=10, metavar='N', help='ranked checkpoints to keep (default: 10)')
    add('-j', '--workers', type=int, default=4, metavar='N', help='data loading processes per rank (default: 4)')
    add('--pin-mem', action='store_true', default=False, help='pin CPU memory in the DataLoader')
    add('--no-prefetcher', action='store_true', default=False, help='disable the fast prefetcher')
    add('--output', default='', metavar='PATH', help='output folder (default: ./output/train)')
    add('--experiment', default='', metavar='NAME', help='sub-folder of --output (default: date-model-size)')
    add('--eval-metric', default='top1', metavar='EVAL_METRIC', help='metric of the best checkpoint (default: top1)')
    add('--use-multi-epochs-loader', action='store_true', default=False, help='reuse loader workers across epochs')
    return parser


def _check_value(action: argparse.Action, key: str, value, source: str):
    """The YAML value, converted the way argparse converts the flag; CLIError if it cannot be."""
    if value is None:
        return None
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise CLIError(f'{source}: {key} must be true or false, got {value!r}')
        return value
    if isinstance(action, ParseKwargs):
        if not isinstance(value, dict):
            raise CLIError(f'{source}: {key} must be a mapping (key: value), got {value!r}')
        return value
    many = action.nargs not in (None, '?')
    values = value if isinstance(value, (list, tuple)) else [value]
    if many != isinstance(value, (list, tuple)):
        want = 'a list' if many else 'a single value'
        raise CLIError(f'{source}: {key} must be {want}, got {value!r}')
    convert = action.type or str
    if convert is int and any(isinstance(v, float) and not v.is_integer() for v in values):
        raise CLIError(f'{source}: {key} must be of type int, got {value!r}')  # int() would truncate it
    try:
        out = [v if (convert is str and isinstance(v, str)) else convert(v) for v in values]
    except (TypeError, ValueError):
        raise CLIError(f'{source}: {key} must be of type {convert.__name__}, got {value!r}') from None
    if any(isinstance(v, bool) for v in values) and convert is not str:
        raise CLIError(f'{source}: {key} must be of type {convert.__name__}, got {value!r}')
    return out if many else out[0]


def load_config(path: str, parser: argparse.ArgumentParser) -> dict:
    """Read a YAML config into flag defaults; every key must be a flag of ``parser``."""
    source = os.path.basename(path)
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except FileNotFoundError:
        raise CLIError(f'config file {path} not found') from None
    except yaml.YAMLError as e:
        raise CLIError(f'config file {path} is not valid YAML: {" ".join(str(e).split())}') from None
    if cfg is None:
        return {}
    if not isinstance(cfg, dict):
        raise CLIError(f'config file {path} must be a mapping of flag names to values, got {type(cfg).__name__}')
    actions = {a.dest: a for a in parser._actions if a.dest not in ('help', 'config')}
    defaults = {}
    for key, value in cfg.items():
        dest = str(key).replace('-', '_')
        if dest not in actions:
            close = difflib.get_close_matches(dest, actions, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ''
            raise CLIError(f"{source}: '{key}' is not a flag of this script{hint}; remove it or fix its name")
        defaults[dest] = _check_value(actions[dest], key, value, source)
    return defaults


def parse_args(argv=None):
    """(args, args_text): the YAML config's values, overridden by the command line; args_text is args as YAML."""
    parser = build_parser()
    config_parser = OneLineErrorParser(add_help=False)
    config_parser.add_argument('-c', '--config', default='')
    config_args, remaining = config_parser.parse_known_args(argv)
    if config_args.config:
        parser.set_defaults(**load_config(config_args.config, parser))
    args = parser.parse_args(remaining)
    del args.config  # args.yaml must load back as a config: only flag keys
    args_text = yaml.safe_dump(vars(args), default_flow_style=False)
    return args, args_text
