"""train_imagenet.py and tools/validate.py on a tiny ImageFolder, on cpu.

One epoch writes its files; --resume continues with one summary row per epoch, also after a kill; torchrun
with two processes takes the same steps on both and evaluates exactly; YAML vs command line; and every
kind of bad input ends in a one-line error. sgconvnext_atto at 32x32, batch 4, 3 classes x 12 images.
"""
import argparse
import csv
import json
import math
import os
import shutil
import sys
import time

import pytest
import timm
import torch
import yaml

from cli_helpers import load_script, one_line_error
import processes
from tiny_dataset import make_image_folder
from sgconvnext.training.checkpoint import CheckpointSaver, trim_summary
from sgconvnext.training.config import CLIError, parse_args, run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, 'train_imagenet.py')
VALIDATE = os.path.join(ROOT, 'tools', 'validate.py')
ENV = dict(os.environ, OMP_NUM_THREADS='1')  # 2 cores: one thread per process avoids oversubscription
BASE = ['--model', 'sgconvnext_atto', '--img-size', '32', '-b', '4', '-j', '0', '--device', 'cpu',
        '--num-classes', '3', '--opt', 'adamw', '--lr', '1e-3', '--warmup-epochs', '0', '--log-interval', '2']


train_script = load_script('train_imagenet.py', 'train_imagenet')
validate_script = load_script(os.path.join('tools', 'validate.py'), 'validate_tool')


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp('data'))


def train_args(data_dir, out, experiment, *extra):
    return ['--data-dir', str(data_dir), *BASE, '--output', str(out), '--experiment', experiment, *extra]


def run(*args, timeout=600):
    return processes.run([sys.executable, *args], timeout=timeout, cwd=ROOT, env=ENV)


def read_summary(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def load_checkpoint(path):
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location='cpu', weights_only=True)


def fail(*argv) -> str:
    """Run the training CLI in-process; it must exit with exactly one line of error."""
    return one_line_error(run_cli, train_script.main, *argv)


@pytest.fixture(scope='module')
def first_run(data_dir, tmp_path_factory):
    """One epoch with EMA through the real command line: (run dir, stderr)."""
    out = tmp_path_factory.mktemp('runs')
    start = time.time()
    proc = run(TRAIN, *train_args(data_dir, out, 'base', '--epochs', '1', '--model-ema'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f'first run: {time.time() - start:.1f}s wall incl. startup')
    return out / 'base', proc.stderr


# ---------------------------------------------------------------------------- training and resume

@pytest.mark.slow
def test_one_epoch_writes_files_with_finite_loss(first_run):
    run_dir, log = first_run
    for name in ('args.yaml', 'summary.csv', 'last.pth.tar', 'model_best.pth.tar'):
        assert (run_dir / name).is_file(), name
    rows = read_summary(run_dir / 'summary.csv')
    assert [r['epoch'] for r in rows] == ['0']
    assert list(rows[0])[:5] == ['epoch', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5']
    assert list(rows[0])[-1] == 'lr'
    assert all(math.isfinite(float(rows[0][k])) for k in ('train_loss', 'eval_loss', 'eval_ema_loss'))
    checkpoint = load_checkpoint(run_dir / 'last.pth.tar')
    assert checkpoint['epoch'] == 0 and checkpoint['arch'] == 'sgconvnext_atto'
    assert {'state_dict', 'state_dict_ema', 'optimizer', 'scheduler'} <= set(checkpoint)
    assert 'Optimizer steps per rank: [9]' in log  # 36 images / batch 4
    args, _ = parse_args(['-c', str(run_dir / 'args.yaml')])  # a run's args.yaml is a valid config
    assert (args.model, args.img_size, args.epochs, args.model_ema) == ('sgconvnext_atto', 32, 1, True)


def test_resume_after_a_completed_epoch_adds_one_row(first_run, data_dir, tmp_path):
    run_dir = shutil.copytree(first_run[0], tmp_path / 'base')
    before = read_summary(run_dir / 'summary.csv')
    train_script.main(train_args(data_dir, tmp_path, 'base', '--epochs', '2', '--model-ema',
                                 '--resume', str(run_dir / 'last.pth.tar')))
    rows = read_summary(run_dir / 'summary.csv')
    assert [r['epoch'] for r in rows] == ['0', '1']
    assert rows[0] == before[0]
    assert load_checkpoint(run_dir / 'last.pth.tar')['epoch'] == 1


def test_resume_into_a_new_output_folder_starts_a_fresh_checkpoint_ranking(first_run, data_dir, tmp_path):
    run_dir = shutil.copytree(first_run[0], tmp_path / 'old')
    checkpoint = load_checkpoint(run_dir / 'last.pth.tar')
    checkpoint['saver']['best_metric'] = 101.0  # top1 that epoch 1 cannot beat
    torch.save(checkpoint, run_dir / 'last.pth.tar')
    train_script.main(train_args(data_dir, tmp_path, 'new', '--epochs', '2', '--model-ema',
                                 '--resume', str(run_dir / 'last.pth.tar')))
    assert load_checkpoint(tmp_path / 'new' / 'model_best.pth.tar')['epoch'] == 1
    # into its own folder the ranking continues: epoch 0 (101.0) stays the best
    train_script.main(train_args(data_dir, tmp_path, 'old', '--epochs', '2', '--model-ema',
                                 '--resume', str(run_dir / 'last.pth.tar')))
    assert load_checkpoint(run_dir / 'last.pth.tar')['epoch'] == 1
    assert load_checkpoint(run_dir / 'model_best.pth.tar')['epoch'] == 0


@pytest.mark.slow
def test_run_killed_mid_training_resumes_with_one_row_per_epoch(data_dir, tmp_path):
    # Smaller batches and larger images so an epoch takes a while (18 steps); SIGKILL once epoch 1 has
    # logged its first step, after the checkpoint of epoch 0. The resumed run must end with rows 0..3.
    args = train_args(data_dir, tmp_path, 'kill', '--epochs', '4', '-b', '2', '--img-size', '64')
    last, log_path = tmp_path / 'kill' / 'last.pth.tar', tmp_path / 'log.txt'
    with open(log_path, 'w') as log, processes.started([sys.executable, TRAIN, *args], cwd=ROOT, env=ENV, stdout=log,
                                                      stderr=log) as proc:
        deadline = time.time() + 300
        while 'Train: 1 [' not in log_path.read_text():
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.time() < deadline
            time.sleep(0.02)
        proc.kill()
        proc.wait()
    assert proc.returncode != 0, 'the run finished before it could be killed'
    assert load_checkpoint(last)['epoch'] in (0, 1, 2)  # whole, whenever the kill came (normally 0)

    train_script.main(args + ['--resume', str(last)])
    rows = read_summary(tmp_path / 'kill' / 'summary.csv')
    assert [int(r['epoch']) for r in rows] == [0, 1, 2, 3]
    # the LR of each epoch is the one of an uninterrupted 4-epoch cosine schedule (restored, not restarted)
    for row in rows:
        expected = 0.5 * 1e-3 * (1 + math.cos(math.pi * int(row['epoch']) / 4))
        assert float(row['lr']) == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
def test_torchrun_two_processes_same_steps_and_exact_eval(data_dir, tmp_path):
    proc = run('-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', TRAIN,
               *train_args(data_dir, tmp_path, 'ddp', '--epochs', '1'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Optimizer steps per rank: [4, 4]' in proc.stderr  # 36 images -> 18 per rank -> 4 full batches
    assert os.listdir(tmp_path) == ['ddp']  # only rank 0 writes
    rows = read_summary(tmp_path / 'ddp' / 'summary.csv')
    assert [r['epoch'] for r in rows] == ['0']
    # 9 val images over 2 ranks: the sampler pads one; the distributed result equals a single-process one
    single = validate_script.main(['--checkpoint', str(tmp_path / 'ddp' / 'last.pth.tar'), '--data-dir',
                                   str(data_dir), '-j', '0', '-b', '4', '--device', 'cpu'])
    assert single['num_samples'] == 9
    assert single['top1'] == pytest.approx(float(rows[0]['eval_top1']), abs=1e-3)
    assert single['loss'] == pytest.approx(float(rows[0]['eval_loss']), rel=1e-4)


NAN_ON_RANK_1 = '''
import importlib.util
import os, sys
import torch
sys.path.insert(0, {root!r})
from sgconvnext.training.config import run_cli
sys.argv[0] = {train!r}
spec = importlib.util.spec_from_file_location('train_imagenet', {train!r})
train = importlib.util.module_from_spec(spec)
spec.loader.exec_module(train)
make_loss = train.create_train_loss


class NanOnRank1(torch.nn.Module):  # the third loss of rank 1 (epoch 0, batch 2) is nan
    def __init__(self, loss_fn):
        super().__init__()
        self.loss_fn, self.calls = loss_fn, 0

    def forward(self, output, target):
        self.calls += 1
        loss = self.loss_fn(output, target)
        return loss * float('nan') if os.environ['RANK'] == '1' and self.calls == 3 else loss


train.create_train_loss = lambda args: NanOnRank1(make_loss(args))
run_cli(train.main)
'''


@pytest.mark.slow
def test_torchrun_non_finite_loss_on_one_rank_stops_every_rank(data_dir, tmp_path):
    script = tmp_path / 'nan_on_rank1.py'
    script.write_text(NAN_ON_RANK_1.format(root=ROOT, train=TRAIN))
    proc = run('-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', script,
               *train_args(data_dir, tmp_path, 'ddp', '--epochs', '1'), timeout=300)
    assert proc.returncode != 0
    # both ranks stop with the same error, neither waits in an all-reduce (their lines may interleave)
    error = 'error: non-finite loss on 1 of 2 ranks at epoch 0, batch 2: stopped before this step'
    assert proc.stderr.count(error) == 2, proc.stderr[-3000:]


def test_warm_start_from_convnext_weights(data_dir, tmp_path, capsys):
    torch.manual_seed(0)
    convnext = timm.create_model('convnext_atto').state_dict()
    torch.save(convnext, tmp_path / 'convnext_atto.pth')
    train_script.main(train_args(data_dir, tmp_path, 'warm', '--epochs', '1', '--pretrained',
                                 '--pretrained-path', str(tmp_path / 'convnext_atto.pth')))
    assert 'Warm start from ConvNeXt (sg_convert="rank1"): loaded' in capsys.readouterr().err
    trained = load_checkpoint(tmp_path / 'warm' / 'last.pth.tar')['state_dict']
    key = 'stages.2.blocks.0.mlp.fc1.weight'  # a shared tensor: loaded, then trained for 9 small steps
    similarity = torch.nn.functional.cosine_similarity(trained[key].flatten(), convnext[key].flatten(), dim=0)
    assert similarity > 0.9


def test_other_training_flags_run(data_dir, tmp_path, capsys):
    train_script.main(train_args(
        data_dir, tmp_path, 'flags', '--epochs', '1', '--grad-accum-steps', '2', '--channels-last', '--amp',
        '--amp-dtype', 'bfloat16', '--mixup', '0.8', '--cutmix', '1.0', '--clip-grad', '1.0', '--no-prefetcher',
        '--sched-on-updates', '--grad-checkpointing', '--model-ema', '--model-ema-warmup'))
    assert 'Optimizer steps per rank: [5]' in capsys.readouterr().err  # 9 batches, 2 per update
    rows = read_summary(tmp_path / 'flags' / 'summary.csv')
    assert math.isfinite(float(rows[0]['train_loss']))


# ---------------------------------------------------------------------------- config files

def test_config_file_sets_defaults_and_the_command_line_wins(tmp_path):
    config = tmp_path / 'config.yaml'
    config.write_text(yaml.safe_dump({
        'model': 'sgconvnext_atto', 'epochs': 7, 'lr': '4e-3', 'batch_size': 64, 'opt_betas': [0.9, 0.99],
        'model_ema': True, 'model_kwargs': {'sg_kernel_dim': 4}}))
    args, args_text = parse_args(['-c', str(config), '--epochs', '1', '-b', '8'])
    assert (args.epochs, args.batch_size) == (1, 8)  # command line wins
    assert args.lr == 4e-3 and isinstance(args.lr, float)  # YAML 1.1 reads 4e-3 as a string
    assert (args.opt_betas, args.model_ema, args.model_kwargs) == ([0.9, 0.99], True, {'sg_kernel_dim': 4})
    assert args.weight_decay == 2e-5  # neither: timm's default
    assert parse_args(['-c', str(config), '--model-kwargs', 'sg_kernel_dim=2'])[0].model_kwargs == {'sg_kernel_dim': 2}
    dumped = tmp_path / 'args.yaml'
    dumped.write_text(args_text)
    assert vars(parse_args(['-c', str(dumped)])[0]) == vars(args)


@pytest.mark.parametrize('size,drop_path', [('tiny', 0.1), ('small', 0.4), ('base', 0.5)])
def test_recipe_configs(size, drop_path):
    args, _ = parse_args(['-c', os.path.join(ROOT, 'configs', f'sgconvnext_{size}_in1k.yaml')])
    assert args.model == f'sgconvnext_{size}' and args.drop_path == drop_path
    assert (args.opt, args.weight_decay, args.epochs, args.sched) == ('adamw', 0.05, 300, 'cosine')
    assert (args.warmup_epochs, args.aa) == (20, 'rand-m9-mstd0.5-inc1')
    assert (args.mixup, args.cutmix, args.smoothing, args.reprob) == (0.8, 1.0, 0.1, 0.25)
    assert (args.model_ema, args.model_ema_decay) == (True, 0.9999)
    assert (args.interpolation, args.train_interpolation, args.crop_pct) == ('bicubic', 'bicubic', 0.875)
    for gpus, accum, lr in ((32, 1, 4e-3), (8, 4, 4e-3), (8, 1, 1e-3), (1, 1, 4e-3 / 32)):
        args.lr, args.world_size, args.grad_accum_steps = None, gpus, accum
        train_script.resolve_lr(args)
        assert args.lr == pytest.approx(lr)


def test_fine_tune_config():
    args, _ = parse_args(['-c', os.path.join(ROOT, 'configs', 'sgconvnext_tiny_ft_from_convnext.yaml'),
                          '--pretrained-path', 'convnext_tiny.pth'])
    assert (args.model, args.pretrained, args.pretrained_path) == ('sgconvnext_tiny', True, 'convnext_tiny.pth')


@pytest.mark.parametrize('text,match', [
    ('lr_bse: 0.1\n', r"'lr_bse' is not a flag of this script \(did you mean 'lr_base'\?\)"),
    ('epochs: two\n', 'epochs must be of type int'),
    ('epochs: 1.9\n', 'epochs must be of type int, got 1.9'),  # not truncated to 1
    ('warmup_epochs: 0.5\n', 'warmup_epochs must be of type int, got 0.5'),
    ('amp: 1\n', 'amp must be true or false'),
    ('scale: 0.5\n', 'scale must be a list'),
    ('- epochs\n', 'must be a mapping'),
    ('epochs: [1\n', 'not valid YAML'),
])
def test_bad_config_files(tmp_path, text, match):
    config = tmp_path / 'bad.yaml'
    config.write_text(text)
    with pytest.raises(CLIError, match=match):
        parse_args(['-c', str(config)])


def test_config_whole_float_for_an_int_flag(tmp_path):
    config = tmp_path / 'config.yaml'
    config.write_text('epochs: 2.0\n')
    assert parse_args(['-c', str(config)])[0].epochs == 2


# ---------------------------------------------------------------------------- bad input

def test_missing_or_empty_data_dir(tmp_path):
    assert 'does not exist' in fail('--data-dir', tmp_path / 'nope', *BASE)
    (tmp_path / 'empty').mkdir()
    assert 'Found 0 images' in fail('--data-dir', tmp_path / 'empty', *BASE)
    assert 'pass --data-dir' in fail(*BASE)


def test_image_folder_without_val_split(tmp_path):
    make_image_folder(tmp_path, train=1, val=0)
    shutil.rmtree(tmp_path / 'val')
    message = fail('--data-dir', tmp_path, *BASE)
    assert "no folder for split 'validation'" in message and "--val-split ''" in message


def test_unknown_model(data_dir, tmp_path):
    message = fail(*train_args(data_dir, tmp_path, 'x'), '--model', 'sgconvnxt_atto')
    assert "unknown model 'sgconvnxt_atto'" in message and 'sgconvnext_atto' in message


def test_bad_flags(data_dir, tmp_path):
    assert 'invalid int value' in fail('--epochs', 'abc')
    assert 'needs --pretrained-path' in fail(*train_args(data_dir, tmp_path, 'x'), '--pretrained')
    assert 'is not a file' in fail(*train_args(data_dir, tmp_path, 'x'), '--resume', tmp_path / 'nope.pth.tar')
    assert 'pass --num-classes 3' in fail(*train_args(data_dir, tmp_path, 'x'), '--num-classes', '2')
    assert 'not found' in fail('-c', tmp_path / 'nope.yaml')


def test_corrupt_image_stops_naming_the_file(data_dir, tmp_path):
    data = shutil.copytree(data_dir, tmp_path / 'data')
    bad = data / 'train' / 'class1' / '5.png'
    bad.write_bytes(b'not a png at all')
    message = fail(*train_args(data, tmp_path, 'corrupt', '--epochs', '1'))
    assert f'corrupt image file {bad}' in message


@pytest.mark.slow
def test_corrupt_image_in_a_loader_worker_is_one_line_on_the_command_line(data_dir, tmp_path):
    data = shutil.copytree(data_dir, tmp_path / 'data')
    bad = data / 'val' / 'class2' / '1.png'
    bad.write_bytes(b'\x89PNG truncated')
    proc = run(TRAIN, *train_args(data, tmp_path, 'corrupt', '--epochs', '1', '-j', '1'))
    assert proc.returncode == 1
    assert 'Traceback' not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f'train_imagenet.py: error: corrupt image file {bad} (cannot identify image file); delete or replace '
        f'it (or re-copy the dataset), then rerun or resume')


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(first_run, data_dir, tmp_path):
    run_dir = shutil.copytree(first_run[0], tmp_path / 'nan')
    checkpoint = load_checkpoint(run_dir / 'last.pth.tar')
    checkpoint['state_dict']['head.fc.weight'].fill_(float('nan'))
    torch.save(checkpoint, tmp_path / 'diverged.pth.tar')
    message = fail(*train_args(data_dir, tmp_path, 'nan', '--epochs', '2', '--model-ema',
                               '--resume', tmp_path / 'diverged.pth.tar'))
    assert 'non-finite loss (nan) at epoch 1, batch 0' in message
    assert f'last good checkpoint {run_dir / "last.pth.tar"} is kept' in message
    kept = load_checkpoint(run_dir / 'last.pth.tar')
    assert kept['epoch'] == 0 and all(torch.isfinite(v).all() for v in kept['state_dict'].values())
    assert [r['epoch'] for r in read_summary(run_dir / 'summary.csv')] == ['0']


# ---------------------------------------------------------------------------- checkpoint files

def test_interrupted_save_leaves_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    saver = CheckpointSaver(model=model, optimizer=optimizer, args=argparse.Namespace(model='linear'),
                            checkpoint_dir=str(tmp_path), recovery_dir=str(tmp_path))
    saver.save_checkpoint(0, metric=1.0)

    def dies_half_way(obj, f, *args, **kwargs):
        f.write(b'half a checkpoint')
        raise OSError('disk full / killed')

    monkeypatch.setattr(torch, 'save', dies_half_way)
    with pytest.raises(OSError):
        saver.save_checkpoint(1, metric=2.0)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / 'last.pth.tar')['epoch'] == 0
    assert load_checkpoint(tmp_path / 'model_best.pth.tar')['epoch'] == 0


def test_trim_summary_keeps_earlier_whole_rows(tmp_path):
    path = tmp_path / 'summary.csv'
    path.write_text('epoch,train_loss,lr\n0,1.0,0.1\n1,0.9,0.1\n2,0.8,0.1\n3,0.7\n')  # last row cut short
    trim_summary(str(path), 2)
    assert path.read_text().splitlines() == ['epoch,train_loss,lr', '0,1.0,0.1', '1,0.9,0.1']
    trim_summary(str(path), 0)  # a fresh run into the same folder starts a new file
    assert not path.exists()


# ---------------------------------------------------------------------------- validation tool

def test_validate_tool_model_and_ema_weights_at_any_size(first_run, data_dir, tmp_path):
    run_dir, _ = first_run
    row = read_summary(run_dir / 'summary.csv')[0]
    common = ['--checkpoint', str(run_dir / 'last.pth.tar'), '--data-dir', str(data_dir), '-j', '0', '--device', 'cpu']
    model = validate_script.main(common)  # defaults: the training resolution and crop
    assert (model['weights'], model['img_size'], model['crop_pct']) == ('model', 32, 0.875)
    assert model['top1'] == pytest.approx(float(row['eval_top1']), abs=1e-3)
    ema = validate_script.main(common + ['--use-ema'])
    assert ema['top1'] == pytest.approx(float(row['eval_ema_top1']), abs=1e-3)

    results_file = tmp_path / 'results.json'
    larger = validate_script.main(common + ['--use-ema', '--img-size', '48', '--crop-pct', '1.0',
                                            '--results-file', str(results_file)])
    assert json.loads(results_file.read_text()) == larger
    assert (larger['img_size'], larger['crop_pct'], larger['num_samples']) == (48, 1.0, 9)
    assert 0 <= larger['top1'] <= larger['top5'] <= 100


def test_validate_tool_errors(first_run, data_dir, tmp_path):
    checkpoint = load_checkpoint(first_run[0] / 'last.pth.tar')
    del checkpoint['state_dict_ema']
    torch.save(checkpoint, tmp_path / 'no_ema.pth.tar')
    for argv, match in [
        (['--checkpoint', str(tmp_path / 'no_ema.pth.tar'), '--use-ema'], 'no EMA weights'),
        (['--checkpoint', str(tmp_path / 'missing.pth.tar')], 'is not a file'),
        (['--checkpoint', str(tmp_path / 'no_ema.pth.tar'), '--model', 'sgconvnext_femto'], 'does not fit'),
    ]:
        with pytest.raises(SystemExit) as exc:
            run_cli(validate_script.main, argv + ['--data-dir', str(data_dir), '-j', '0', '--device', 'cpu'])
        assert match in str(exc.value.code) and '\n' not in str(exc.value.code)
