"""A checkpoint trained at one resolution, fine-tuned and validated at another, through the command-line tools.

sgconvnext_atto trained one epoch at 32 px on a tiny generated ImageFolder, then fine-tuned at 64 px from that
checkpoint (--pretrained-path and --initial-checkpoint) and validated at 64 and 128 px under both size policies.
The kernels keep the 32 px geometry they were trained with all along.
"""
import argparse
import json
import os
import sys

import pytest
import torch

from cli_helpers import ROOT, load_script
import processes
from sgconvnext.kernel import unpack_geometry
from tiny_dataset import make_image_folder

BASE = ['--model', 'sgconvnext_atto', '-b', '4', '-j', '0', '--device', 'cpu', '--num-classes', '3', '--opt', 'adamw',
        '--lr', '1e-3', '--warmup-epochs', '0', '--log-interval', '5', '--epochs', '1']


train_script = load_script('train_imagenet.py', 'train_imagenet_for_resolution')
validate_script = load_script(os.path.join('tools', 'validate.py'), 'validate_for_resolution')


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def trained_at_32(tmp_path_factory):
    data = make_image_folder(tmp_path_factory.mktemp('data'), size=64)
    out = tmp_path_factory.mktemp('runs')
    train_script.main(['--data-dir', data, *BASE, '--img-size', '32', '--output', str(out), '--experiment', 'at32'])
    return data, out, out / 'at32' / 'last.pth.tar'


def _stage0_geometry(path):
    with torch.serialization.safe_globals([argparse.Namespace]):
        state = torch.load(path, map_location='cpu', weights_only=True)['state_dict']
    return unpack_geometry(state['stages.0.blocks.0.conv_dw.kernel_h.geometry'])


@pytest.mark.slow
@pytest.mark.parametrize('load_flags', [['--pretrained', '--pretrained-path'], ['--initial-checkpoint']])
def test_fine_tune_at_twice_the_size_from_a_checkpoint(trained_at_32, load_flags, capsys):
    data, out, checkpoint = trained_at_32
    assert _stage0_geometry(checkpoint) == (8, 8, 0.5)  # 32 px / 4
    name = 'ft64' + load_flags[-1].replace('-', '_')
    train_script.main(['--data-dir', data, *BASE, '--img-size', '64', *load_flags, str(checkpoint),
                       '--model-kwargs', 'sg_resize=stretch', '--output', str(out), '--experiment', name])
    assert "took the checkpoint's geometry" in capsys.readouterr().err  # built for 64 px, took the 32 px kernels
    fine_tuned = out / name / 'last.pth.tar'
    assert _stage0_geometry(fine_tuned) == (8, 8, 0.5)
    result = validate_script.main(['--checkpoint', str(fine_tuned), '--data-dir', data, '-b', '4', '-j', '0',
                                   '--device', 'cpu'])
    assert result['img_size'] == 64 and result['sg_resize'] == 'stretch' and result['num_samples'] == 9


@pytest.mark.slow
def test_validate_at_other_sizes_under_each_policy(trained_at_32, tmp_path):
    data, _, checkpoint = trained_at_32
    losses = {}
    for resize in ('stretch', 'fixed'):
        for size in (32, 64, 128):
            result = validate_script.main(['--checkpoint', str(checkpoint), '--data-dir', data, '-b', '4', '-j', '0',
                                           '--device', 'cpu', '--img-size', str(size), '--model-kwargs',
                                           f'sg_resize={resize}', '--results-file', str(tmp_path / 'r.json')])
            assert result['img_size'] == size and result['sg_resize'] == resize
            assert json.loads((tmp_path / 'r.json').read_text())['loss'] == result['loss']
            losses[resize, size] = result['loss']
    assert losses['stretch', 32] == losses['fixed', 32]  # the built size: the policies agree exactly
    assert losses['stretch', 128] != losses['fixed', 128]


def test_384_fine_tune_recipe_resolves_to_its_source_values():
    args, _ = train_script.parse_args(['-c', os.path.join(ROOT, 'configs', 'sgconvnext_base_in1k_ft384.yaml'),
                                       '--pretrained-path', 'base_224.pth.tar'])
    assert (args.model, args.img_size, args.model_kwargs) == ('sgconvnext_base', 384, {'sg_resize': 'stretch'})
    assert (args.epochs, args.warmup_epochs, args.weight_decay, args.layer_decay, args.drop_path) == (30, 0, 1e-8, 0.7, 0.8)
    assert (args.mixup, args.cutmix, args.crop_pct, args.model_ema, args.head_init_scale) == (0, 0, 1.0, False, None)
    args.lr, args.world_size = None, 8  # 8 GPUs x 32 x 2 accumulation steps = 512: [R]'s 5e-5
    train_script.resolve_lr(args)
    assert args.lr == pytest.approx(5e-5)


@pytest.mark.slow
def test_384_fine_tune_recipe_runs_from_a_smaller_checkpoint(trained_at_32, capsys):
    # The recipe as written (layer decay, RandAugment, random erasing, drop path, cosine per update), scaled down
    # to this machine: atto at 64 px from the 32 px checkpoint, as 384 from 224.
    data, out, checkpoint = trained_at_32
    train_script.main(['-c', os.path.join(ROOT, 'configs', 'sgconvnext_base_in1k_ft384.yaml'), '--data-dir', data,
                       '--model', 'sgconvnext_atto', '--img-size', '64', '--pretrained-path', str(checkpoint),
                       '--num-classes', '3', '-b', '4', '-j', '0', '--grad-accum-steps', '1', '--device', 'cpu',
                       '--epochs', '1', '--output', str(out), '--experiment', 'recipe384'])
    log = capsys.readouterr().err
    assert "took the checkpoint's geometry" in log and 'stretch policy' in log
    assert _stage0_geometry(out / 'recipe384' / 'last.pth.tar') == (8, 8, 0.5)


@pytest.mark.slow
def test_validate_runs_as_a_command_without_installing_the_package(trained_at_32, tmp_path):
    data, _, checkpoint = trained_at_32
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    proc = processes.run([sys.executable, os.path.join(ROOT, 'tools', 'validate.py'), '--checkpoint', str(checkpoint),
                          '--data-dir', data, '-b', '4', '-j', '0', '--device', 'cpu', '--img-size', '48',
                          '--results-file', str(tmp_path / 'r.json')],
                         timeout=300, cwd=tmp_path, env=dict(env, OMP_NUM_THREADS='1'))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / 'r.json').read_text())['img_size'] == 48


def test_validate_tunes_or_loads_the_backends_and_gives_the_same_numbers(trained_at_32, tmp_path, capsys):
    data, _, checkpoint = trained_at_32
    common = ['--checkpoint', str(checkpoint), '--data-dir', data, '-b', '4', '-j', '0', '--device', 'cpu',
              '--channels-last']
    plain = validate_script.main(common)
    tuned = validate_script.main(common + ['--sg-tune'])
    assert 'SGConv2d backends tuned for this run' in capsys.readouterr().err
    for key in ('top1', 'top5', 'num_samples', 'img_size'):
        assert tuned[key] == plain[key]
    assert abs(tuned['loss'] - plain['loss']) < 1e-4
    missing = tmp_path / 'none.json'
    with pytest.raises(SystemExit) as e:
        from sgconvnext.cli import run_cli
        run_cli(validate_script.main, common + ['--sg-backend-table', str(missing)])
    assert 'cannot read backend table' in str(e.value.code)
