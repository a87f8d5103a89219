"""Backends tuned on this device (sgconvnext/tuning.py): what is timed, what is kept, saved tables, every rank alike."""
import json
import os
import warnings

import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import sgconvnext
from sgconvnext import SGConv2d
from sgconvnext.sgconv import EXACT_BACKENDS, choose_backend
from sgconvnext.tuning import apply_backend_table, tune_backends


@pytest.fixture(scope='module')
def tuned():
    """sgconvnext_atto at 64 px, channels_last, tuned for batch 2: (model, input, table)."""
    torch.manual_seed(0)
    model = timm.create_model('sgconvnext_atto', img_size=64).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    return model, x, tune_backends(model, x, runs=1)


def layers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, SGConv2d)}


def test_every_distinct_call_is_timed_once_and_its_fastest_backend_kept(tuned):
    model, _, table = tuned
    keys = {t['key'] for t in table['timings']}
    maps = {'16x16', '8x8', '4x4', '2x2'}  # the four stages at 64 px
    assert keys == {f'{m}/channels_last/float32/{mode}/cpu/batch2' for m in maps for mode in ('train', 'infer')}
    for t in table['timings']:
        assert set(t['ms']) == set(EXACT_BACKENDS) and t['choice'] == min(t['ms'], key=t['ms'].get)
    assert sorted(n for t in table['timings'] if '/train/cpu/' in t['key'] for n in t['layers']) == \
        sorted(layers(model))  # every layer is in the table, once per mode
    for t in table['timings']:
        for name in t['layers']:
            assert layers(model)[name].tuned[t['key']] == t['choice']


def test_tuned_choices_are_run_and_unknown_calls_keep_auto(tuned):
    model, x, table = tuned
    layer = model.stages[0].blocks[0].conv_dw
    infer_key = '16x16/channels_last/float32/infer/cpu/batch2'
    original = dict(layer.tuned)
    try:
        for backend in EXACT_BACKENDS:
            layer.tuned[infer_key] = backend
            assert layer.resolve_backend(16, 16, x.device, False, True, 'float32', 2) == backend
        assert layer.resolve_backend(40, 40, x.device, False, True, 'float32') == 'direct'  # auto's rule: 2.5x away
    finally:
        layer.tuned = original


def test_tuning_changes_no_output_and_no_random_state(tuned):
    model, x, table = tuned
    untuned = timm.create_model('sgconvnext_atto', img_size=64)
    untuned.load_state_dict(model.state_dict())
    retuned = timm.create_model('sgconvnext_atto', img_size=64)
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    tune_backends(retuned, x, modes=('infer',), warmup=0, runs=1)
    assert torch.equal(before, torch.random.get_rng_state())  # drop path's and the timing inputs' draws are undone
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), untuned.eval()(x), rtol=1e-5, atol=1e-5)


def test_scripted_and_compiled_models_follow_the_table(tuned):
    model, x, _ = tuned
    model = model.eval()
    for layer in layers(model).values():  # every inference call to fft: visible as FFT ops in the profile
        layer.tuned = {key: 'fft' for key in layer.tuned}
    try:
        scripted = torch.jit.script(model)
        compiled = torch.compile(model, backend='aot_eager', fullgraph=True, dynamic=True)  # sizes as symbols too
        for run in (model, scripted, compiled):
            with torch.no_grad(), torch.profiler.profile() as prof:
                run(x)
            names = {e.name for e in prof.events()}
            assert any('fft' in n for n in names), sorted(names)[:20]
    finally:
        apply_backend_table(model, tuned[2])


def test_a_saved_table_applies_only_where_it_was_made(tuned, tmp_path):
    model, x, table = tuned
    path = str(tmp_path / 'table.json')
    sgconvnext.save_backend_table(table, path)
    fresh = timm.create_model('sgconvnext_atto', img_size=64)
    assert sgconvnext.load_backend_table(fresh, path, input_shape=x.shape) is not None
    assert {n: m.tuned for n, m in layers(fresh).items()} == {n: m.tuned for n, m in layers(model).items()}
    for field, value, reason in (('device', 'cuda: NVIDIA H200', 'made on cuda: NVIDIA H200'),
                                 ('torch', '2.0.0', 'made with torch 2.0.0'),
                                 ('input_shape', [8, 3, 64, 64], 'made for input (8, 3, 64, 64)')):
        other = str(tmp_path / f'{field}.json')
        sgconvnext.save_backend_table(dict(table, **{field: value}), other)
        with pytest.warns(UserWarning, match=reason.replace('(', r'\(').replace(')', r'\)')):
            assert sgconvnext.load_backend_table(fresh, other, input_shape=x.shape) is None
        assert all(not m.tuned for m in layers(fresh).values())  # auto again


def test_bad_tables_are_refused_in_one_line(tuned, tmp_path):
    model, x, table = tuned
    fresh = timm.create_model('sgconvnext_atto', img_size=64)
    cases = {
        'unknown.json': (dict(table, timings=[dict(table['timings'][0], choice='winograd')]), 'unknown backend'),
        'other.json': (dict(table, layers={**table['layers'], 'stages.9.blocks.0.conv_dw': {}}), 'for another model'),
        'notatable.json': ({'hello': 1}, 'not an sgconvnext backend table'),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(json.dumps(content))
        with pytest.raises(ValueError, match=message) as e:
            sgconvnext.load_backend_table(fresh, str(tmp_path / name))
        assert '\n' not in str(e.value) and name in str(e.value)
    (tmp_path / 'damaged.json').write_text(json.dumps(table)[:200])
    with pytest.raises(ValueError, match='damaged.json is damaged'):
        sgconvnext.load_backend_table(fresh, str(tmp_path / 'damaged.json'))
    femto = timm.create_model('sgconvnext_femto', img_size=64)
    with pytest.raises(ValueError, match='for another model'):
        apply_backend_table(femto, table)
    with pytest.raises(ValueError, match='no SGConv2d layers'):
        tune_backends(timm.create_model('convnext_atto'), x)


def _rank(rank, port, path, results):
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=2)
    torch.manual_seed(rank)  # different weights and inputs: only rank 0's timings may count
    model = timm.create_model('sgconvnext_atto', img_size=32)
    table = tune_backends(model, torch.randn(1, 3, 32, 32), modes=('infer',), warmup=0, runs=1)
    results[rank] = ({n: m.tuned for n, m in layers(model).items()}, table['timings'])
    dist.destroy_process_group()


@pytest.mark.slow
def test_under_distributed_every_rank_runs_rank0s_choices():
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank, args=(port, None, results), nprocs=2, join=True)
        (tuned0, timings0), (tuned1, timings1) = results[0], results[1]
    assert tuned0 == tuned1 and timings0 == timings1 and any(tuned0.values())


def test_warning_free_when_nothing_is_wrong(tuned, tmp_path):
    model, x, table = tuned
    path = str(tmp_path / 't.json')
    sgconvnext.save_backend_table(table, path)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        sgconvnext.load_backend_table(model, path)
    assert os.path.getsize(path) > 0


def test_train_imagenet_tunes_or_loads_a_table_before_the_first_epoch(tmp_path, capsys):
    from cli_helpers import load_script, one_line_error
    from sgconvnext.cli import run_cli
    from tiny_dataset import make_image_folder
    train = load_script('train_imagenet.py', 'train_imagenet_tuning')
    data = make_image_folder(tmp_path / 'data')
    base = ['--data-dir', data, '--model', 'sgconvnext_atto', '--img-size', '32', '-b', '4', '-j', '0', '--device',
            'cpu', '--num-classes', '3', '--epochs', '1', '--output', str(tmp_path), '--channels-last']
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train.main(base + ['--experiment', 'tuned', '--sg-tune'])
        err = capsys.readouterr().err
        assert 'SGConv2d backends tuned for this run' in err and '8x8/channels_last/float32/train/cpu' in err
        model = timm.create_model('sgconvnext_atto', img_size=32, num_classes=3).to(memory_format=torch.channels_last)
        table = tune_backends(model, torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last),
                              warmup=0, runs=1)
        sgconvnext.save_backend_table(table, str(tmp_path / 'table.json'))
        train.main(base + ['--experiment', 'loaded', '--sg-backend-table', str(tmp_path / 'table.json')])
        assert f'SGConv2d backends from {tmp_path / "table.json"}' in capsys.readouterr().err
        both = one_line_error(run_cli, train.main, *base, '--sg-tune', '--sg-backend-table', tmp_path / 'table.json')
        assert 'pass one of them' in both
        other = one_line_error(run_cli, train.main, *[a if a != 'sgconvnext_atto' else 'convnext_atto' for a in base],
                               '--sg-tune')
        assert 'convnext_atto has none' in other
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / 'tuned' / 'summary.csv').exists() and (tmp_path / 'loaded' / 'summary.csv').exists()


def test_a_table_fits_the_model_through_ddp_ema_and_compile_wrappers(tuned):
    model, x, table = tuned

    class Wrapper(torch.nn.Module):  # what DDP and timm's ModelEmaV3 look like from outside: .module
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x):
            return self.module(x)

    fresh = timm.create_model('sgconvnext_atto', img_size=64)
    for wrapped in (Wrapper(fresh), torch.compile(fresh, backend='eager'), Wrapper(torch.compile(fresh, backend='eager'))):
        apply_backend_table(wrapped, table)  # the names carry module. / _orig_mod.; the table's do not
        assert {n: m.tuned for n, m in layers(fresh).items()} == {n: m.tuned for n, m in layers(model).items()}
    wrapped_table = tune_backends(Wrapper(fresh), x, modes=('infer',), warmup=0, runs=1)
    assert all(not name.startswith('module.') for t in wrapped_table['timings'] for name in t['layers'])
    apply_backend_table(model, tuned[2])


def test_a_batch_never_tuned_takes_the_choice_of_the_nearest_tuned_batch(monkeypatch):
    monkeypatch.setattr(sgconvnext.sgconv, '_warned', set())
    layer = SGConv2d(40, 16)
    key = '16x16/channels_last/float32/infer/cpu/batch{}'
    layer.tuned = {key.format(2): 'fft', key.format(64): 'direct'}
    cpu = torch.device('cpu')
    assert [layer.resolve_backend(16, 16, cpu, False, True, 'float32', b) for b in (1, 2, 8, 40, 64, 512)] == \
        ['fft', 'fft', 'fft', 'direct', 'direct', 'direct']
    with pytest.warns(UserWarning, match='none for the call 16x16/contiguous/float32/infer/cpu/batch8') as record:
        assert layer.resolve_backend(16, 16, cpu, False, False, 'float32', 8) == 'matmul'  # auto's rule
        layer.resolve_backend(16, 16, torch.device('cuda'), False, True, 'float32', 8)  # as after .cuda(): once
    assert len(record) == 1 and 'tune again' in str(record[0].message)
    x = torch.randn(3, 40, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.profiler.profile() as prof:
        layer(x)  # batch 3: the batch-2 choice, fft
    assert any('fft' in e.name for e in prof.events())


def test_layers_with_an_explicit_backend_are_not_tuned_and_that_is_said(monkeypatch):
    model = torch.nn.Sequential(SGConv2d(40, 8), SGConv2d(40, 8, backend='fft'))
    with pytest.warns(UserWarning, match=r'1 SGConv2d layer\(s\) have an explicit backend and are not tuned.*'
                                         r"e\.g\. 1 \(backend='fft'\)"):
        table = tune_backends(model, torch.randn(1, 40, 8, 8), modes=('infer',), warmup=0, runs=1)
    assert table['not_tuned'] == ['1'] and [t['layers'] for t in table['timings']] == [['0']]
    assert model[1].tuned == {}


def test_scripting_a_model_tuned_under_autocast_says_those_choices_are_not_used(monkeypatch):
    monkeypatch.setattr(sgconvnext.sgconv, '_warned', set())
    layer = SGConv2d(40, 8)
    layer.tuned = {'8x8/channels_last/bfloat16/infer/cpu/batch1': 'fft'}
    with pytest.warns(UserWarning, match='backends tuned under bf16 / fp16 autocast are not used there'):
        torch.jit.script(layer)


def test_a_table_of_the_older_format_is_refused_with_what_to_do(tuned, tmp_path):
    model, _, table = tuned
    (tmp_path / 'old.json').write_text(json.dumps(dict(table, format='sgconvnext-backend-table/1')))
    with pytest.raises(ValueError, match=r'old.json is a backend table of another format .*tune again'):
        sgconvnext.load_backend_table(model, str(tmp_path / 'old.json'))


def test_sg_tune_in_a_training_run_leaves_the_random_numbers_as_they_were():
    import argparse
    import contextlib
    from sgconvnext.training.model import setup_backends
    model = timm.create_model('sgconvnext_atto', img_size=32)
    args = argparse.Namespace(sg_tune=True, sg_backend_table='', model='sgconvnext_atto', batch_size=2,
                              channels_last=False)
    torch.manual_seed(3)
    before = torch.random.get_rng_state()
    setup_backends(args, model, (3, 32, 32), torch.device('cpu'), contextlib.nullcontext, modes=('infer',))
    assert torch.equal(before, torch.random.get_rng_state())  # the example batch is drawn on a forked generator
    assert any(layer.tuned for layer in layers(model).values())


def test_a_map_size_never_tuned_takes_the_choice_of_the_nearest_tuned_map(monkeypatch):
    # detection canvases change every batch: no retuning, the nearest tuned map within TUNED_SHAPE_REACH decides
    monkeypatch.setattr(sgconvnext.sgconv, '_warned', set())
    layer = SGConv2d(40, 16)
    key = '{}/contiguous/float32/train/cpu/batch{}'
    layer.tuned = {key.format('200x336', 2): 'fft', key.format('50x84', 2): 'direct', key.format('50x84', 8): 'fft',
                   key.format('200x336', 2).replace('train', 'infer'): 'matmul'}
    cpu = torch.device('cpu')
    pick = [layer.resolve_backend(h, w, cpu, True, False, 'float32', 2) for h, w in
            ((200, 304), (336, 200), (100, 168), (100, 167), (50, 76), (40, 100))]
    assert pick == ['fft', 'fft', 'fft', 'direct', 'direct', 'direct']  # (100, 168) is 2x from both: the first wins
    assert layer.resolve_backend(50, 76, cpu, True, False, 'float32', 7) == 'fft'  # nearest map, then nearest batch
    assert layer.resolve_backend(200, 304, cpu, False, False, 'float32', 2) == 'matmul'  # inference keys for inference
    with pytest.warns(UserWarning, match='none for the call 12x12/contiguous'):
        assert layer.resolve_backend(12, 12, cpu, True, False, 'float32', 2) == choose_backend(12, 12, cpu)
