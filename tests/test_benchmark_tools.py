"""tools/benchmark.py and tools/plot_kernels.py end to end on CPU, small models and sizes."""
import json
import os
import sys

import pytest
import timm
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, 'tools')
sys.path.insert(0, TOOLS)

import benchmark  # noqa: E402
import processes  # noqa: E402
from bench import report as bench_report  # noqa: E402
import plot_kernels  # noqa: E402
from sgconvnext import SGConv2d  # noqa: E402
from sgconvnext.sgconv import choose_backend  # noqa: E402
from sgconvnext.toeplitz import is_channels_last  # noqa: E402

ATTO = ['sgconvnext_atto', 'convnext_atto']
FAST = ['--img-size', '64', '--batch-size', '2', '--warmup', '0', '--steps', '2', '--device', 'cpu']


def test_end_to_end_bench_all_writes_json_and_report(tmp_path):
    out, report = tmp_path / 'rows.json', tmp_path / 'BENCH.md'
    report.write_text('# Benchmarks\n\n<!-- other:start -->\nkeep me\n<!-- other:end -->\n')
    cmd = [sys.executable, os.path.join(TOOLS, 'benchmark.py'), '--models', *ATTO, '--bench', 'all', *FAST,
           '--json', str(out), '--write', str(report), '--section', 'test']
    done = processes.run(cmd, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())
    assert [r['model'] for r in rows] == ATTO
    for row in rows:
        model = timm.create_model(row['model'], **({'img_size': 64} if row['model'].startswith('sg') else {}))
        assert row['params'] == sum(p.numel() for p in model.parameters())
        assert row['img_size'] == 64 and row['batch_size'] == 2
        assert 0 < row['mixer_gmacs'] < row['gmacs'] and row['gmacs_train'] > 0 and row['activations_m'] > 0
        for mode in ('infer', 'train'):
            assert row[f'{mode}_img_s'] == pytest.approx(2 / (row[f'{mode}_ms_per_step'] / 1e3))
            assert row[f'{mode}_img_s'] > 0
    assert rows[1]['gmacs'] == rows[1]['gmacs_train']  # ConvNeXt's ops do not depend on grad mode
    assert rows[0]['auto_backends'] and rows[1]['auto_backends'] == []
    text = report.read_text()
    assert 'keep me' in text and '<!-- benchmark:test:start -->' in text
    assert '| 64 | sgconvnext_atto |' in text and '| 64 | sgconvnext_atto |' in done.stdout
    assert 'timing train' in done.stderr  # progress goes to stderr


def input_layouts(size):
    """Whether each stage's first SGConv2d sees a channels_last input (as its forward decides), observed with a hook."""
    model = timm.create_model('sgconvnext_atto', img_size=size).eval()
    seen = []
    for stage in model.stages:
        stage.blocks[0].conv_dw.register_forward_pre_hook(
            lambda m, inputs: seen.append(is_channels_last(inputs[0])))  # the layer's rule (1x1 maps: not)
    with torch.no_grad():
        model(torch.randn(1, 3, size, size))
    return seen


def test_sweep_rows_report_the_backend_auto_runs_per_stage():
    rows = benchmark.main(['--models', 'sgconvnext_atto', '--bench', 'flops', '--img-size', '32', '64',
                           '--device', 'cpu'])
    assert [r['img_size'] for r in rows] == [32, 64]
    for row in rows:
        assert 'infer_img_s' not in row and 'train_img_s' not in row
        size = row['img_size']
        # ConvNeXt maps: stem /4, then /2 per stage
        assert [s['map'] for s in row['auto_backends']] == [[size // r] * 2 for r in (4, 8, 16, 32)]
        layouts = input_layouts(size)
        for stage, channels_last in zip(row['auto_backends'], layouts):
            h, w = stage['map']
            cpu = torch.device('cpu')
            assert stage['infer'] == choose_backend(h, w, cpu, needs_grad=False, channels_last=channels_last)
            assert stage['train'] == choose_backend(h, w, cpu, needs_grad=True, channels_last=channels_last)
    assert rows[1]['gmacs'] > 3.5 * rows[0]['gmacs']  # 4x the pixels, at least ~4x the MACs


@pytest.mark.parametrize('resize', ['stretch', 'fixed'])
def test_build_size_runs_one_model_at_every_size_and_reports_its_kernels(resize):
    rows = benchmark.main(['--models', 'sgconvnext_atto', '--bench', 'flops', '--img-size', '32', '64',
                           '--build-size', '32', '--model-kwargs', f'sg_resize={resize}', '--device', 'cpu'])
    assert rows[0]['params'] == rows[1]['params'] and [r['build_size'] for r in rows] == [32, 32]
    stages = rows[1]['auto_backends']
    assert [s['map'] for s in stages] == [[16, 16], [8, 8], [4, 4], [2, 2]]
    assert [s['built'] for s in stages] == [[8, 8], [4, 4], [2, 2], [1, 1]] and {s['resize'] for s in stages} == {resize}
    table = '\n'.join(bench_report.format_backends(rows))
    assert f'16x16 (8x8, {resize}):' in table and '| 32 | sgconvnext_atto | 8x8: ' in table


def test_model_kwargs_reach_the_model_and_threads_are_restored():
    threads = torch.get_num_threads()
    rows = benchmark.main(['--models', 'sgconvnext_atto', '--model-kwargs', 'sg_backend=fft', 'sg_kernel_dim=4',
                           '--img-size', '32', '--bench', 'flops', '--threads', '1', '--device', 'cpu'])
    assert rows[0]['model_kwargs'] == {'sg_backend': 'fft', 'sg_kernel_dim': 4}
    assert {s['infer'] for s in rows[0]['auto_backends']} == {s['train'] for s in rows[0]['auto_backends']} == {'fft'}
    assert torch.get_num_threads() == threads


def test_a_model_entry_carries_its_own_kwargs_over_the_shared_ones():
    """One model under two size policies beside a model that takes no sg_resize, in one process."""
    rows = benchmark.main(['--models', 'sgconvnext_atto', 'sgconvnext_atto:sg_resize=fixed,sg_kernel_dim=4',
                           'convnext_atto', '--img-size', '64', '--build-size', '32', '--bench', 'flops',
                           '--device', 'cpu'])
    stretch, fixed, convnext = rows
    assert [r['model_name'] for r in rows] == ['sgconvnext_atto', 'sgconvnext_atto', 'convnext_atto']
    assert fixed['model'] == 'sgconvnext_atto:sg_resize=fixed,sg_kernel_dim=4'
    assert fixed['model_kwargs'] == {'sg_resize': 'fixed', 'sg_kernel_dim': 4} and convnext['model_kwargs'] == {}
    assert {s['resize'] for s in stretch['auto_backends']} == {'stretch'}
    assert {s['resize'] for s in fixed['auto_backends']} == {'fixed'}
    assert fixed['params'] < stretch['params']  # fewer sub-kernels: its own sg_kernel_dim reached the model
    table = '\n'.join(bench_report.format_table(rows, ['flops']))
    assert '| 64 | sgconvnext_atto:sg_resize=fixed,sg_kernel_dim=4 |' in table


def test_shared_kwargs_reach_every_entry_and_an_entry_overrides_them():
    args = benchmark.parse_args(['--models', 'sgconvnext_atto', 'sgconvnext_atto:sg_backend=matmul',
                                 '--model-kwargs', 'sg_backend=fft', 'drop_path_rate=0.1'])
    assert args.specs == {'sgconvnext_atto': ('sgconvnext_atto', {'sg_backend': 'fft', 'drop_path_rate': 0.1}),
                          'sgconvnext_atto:sg_backend=matmul':
                              ('sgconvnext_atto', {'sg_backend': 'matmul', 'drop_path_rate': 0.1})}


def test_rates_keep_three_significant_digits():
    assert [bench_report._rate(v) for v in (1234.5, 109.4, 10.12, 3.251, 0.4123, 9.996)] == \
        ['1230', '109', '10.1', '3.25', '0.412', '10.0']


def test_report_ratios_are_to_the_first_model_of_each_size():
    rows = [dict(model='a', img_size=64, params_m=2.0, gmacs=1.0, gmacs_train=1.0, mixer_gmacs=None,
                 activations_m=1.0, auto_backends=[]),
            dict(model='b', img_size=64, params_m=3.0, gmacs=0.5, gmacs_train=0.5, mixer_gmacs=None,
                 activations_m=2.0, auto_backends=[])]
    lines = bench_report.format_table(rows, ['flops'])
    assert lines[2].startswith('| 64 | a | 2.00 (1.00) | 1.000 (1.00)')
    assert lines[3].startswith('| 64 | b | 3.00 (1.50) | 0.500 (0.50)')
    assert 'mixer' not in lines[0]


def test_model_groups_take_ratios_to_their_own_first_model():
    args = benchmark.parse_args(['--models', *ATTO, '--models', 'convnext_femto', 'convnext_atto'])
    assert args.groups == [ATTO, ['convnext_femto', 'convnext_atto']] and len(args.models) == 4
    rows = [dict(model=m, group=g, img_size=64, params_m=p, auto_backends=[])
            for m, g, p in (('a', 0, 2.0), ('b', 0, 4.0), ('c', 1, 5.0), ('d', 1, 10.0))]
    lines = bench_report.format_table(rows, [])
    assert [line.split('|')[3].strip() for line in lines[2:]] == ['2.00 (1.00)', '4.00 (2.00)', '5.00 (1.00)',
                                                                  '10.00 (2.00)']


def test_defaults_compare_tiny_models_flops_and_inference():
    args = benchmark.parse_args([])
    assert args.models == ['sgconvnext_tiny', 'convnext_tiny'] and args.groups == [args.models]
    assert args.bench == ['flops', 'infer'] and args.img_size == [224]


@pytest.mark.parametrize('argv,match', [
    (['--models', 'sgconvnext_atoo'], "unknown model 'sgconvnext_atoo'"),
    (['--img-size', 'big'], 'image size must be a positive integer'),
    (['--img-size', '0'], 'image size must be a positive integer'),
    (['--batch-size', '0'], '--batch-size must be >= 1'),
    (['--steps', '0'], '--steps must be >= 1'),
    (['--models', 'convnext_atto', 'convnext_atto'], 'twice'),
    (['--device', 'tpu'], '--device must be cpu or cuda'),
    (['--bench', 'speed'], 'invalid choice'),
    (['--section', 'x'], '--section'),
    (['--threads', '0'], '--threads must be >= 1'),
    (['--model-kwargs', 'sg_backend'], 'KEY=VALUE'),
    (['--models', 'sgconvnext_atto:sg_backend'], "--models: model kwargs are KEY=VALUE pairs, got 'sg_backend' in"),
    (['--models', 'sgconvnext_atto:'], 'nothing after ":"'),
    (['--models', 'sgconvnext_atoo:sg_resize=fixed'], "unknown model 'sgconvnext_atoo'"),
])
def test_bad_arguments_give_a_one_line_error(argv, match, capsys):
    with pytest.raises(SystemExit) as exc:
        benchmark.parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert 'error:' in err and match in err


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the refusal on a machine without CUDA')
def test_cuda_without_cuda_is_refused(capsys):
    with pytest.raises(SystemExit):
        benchmark.parse_args(['--device', 'cuda'])
    assert 'torch.cuda.is_available() is False' in capsys.readouterr().err


def test_model_that_cannot_take_the_size_names_model_and_size():
    with pytest.raises(SystemExit, match='convnext_atto at --img-size 8'):
        benchmark.main(['--models', 'convnext_atto', '--img-size', '8', '--bench', 'flops', '--device', 'cpu'])


@pytest.mark.parametrize('model,size,stages', [('sgconvnext_atto', 64, 4), ('convnext_atto', 64, 4)])
def test_plot_kernels_writes_png_of_the_documented_size(tmp_path, model, size, stages):
    out = tmp_path / 'k.png'
    channels, cell = 3, 20
    plot_kernels.main(['--model', model, '--img-size', str(size), '--channels', str(channels), '--cell', str(cell),
                       '--out', str(out)])
    with Image.open(out) as image:
        assert image.format == 'PNG'
        width = max(plot_kernels.MIN_WIDTH, plot_kernels.LABEL_WIDTH + channels * (cell + plot_kernels.GAP)
                    + plot_kernels.MARGIN)
        height = (plot_kernels.TITLE_HEIGHT + stages * (cell + plot_kernels.GAP) + plot_kernels.PROFILE_HEIGHT
                  + plot_kernels.MARGIN)
        assert image.size == (width, height)


def test_plot_kernels_from_checkpoint_shows_its_weights(tmp_path):
    model = timm.create_model('sgconvnext_atto', img_size=64)
    layer = model.stages[3].blocks[0].conv_dw
    with torch.no_grad():
        layer.kernel_h.weight.zero_()
        layer.kernel_h.weight[:, 0, 0, 0] = 1.0  # offset 0 only on the H axis: K[c] is one row
    path = tmp_path / 'ckpt.pth'
    torch.save(model.state_dict(), path)
    loaded = plot_kernels.build_model('sgconvnext_atto', 64, str(path), use_ema=False)
    (_, kernels, mixer), = [r for i, r in enumerate(plot_kernels.stage_kernels(loaded)) if i == 3]
    assert isinstance(mixer, SGConv2d)
    centre = kernels.shape[1] // 2
    assert kernels[:, centre].abs().sum() > 0
    assert kernels[:, :centre].abs().sum() == 0 and kernels[:, centre + 1:].abs().sum() == 0
    assert plot_kernels.main(['--model', 'sgconvnext_atto', '--img-size', '64', '--checkpoint', str(path),
                              '--no-ema', '--out', str(tmp_path / 'k.png')]) == str(tmp_path / 'k.png')


def test_plot_kernels_draws_a_checkpoint_of_another_size_with_its_geometry(tmp_path):
    path = tmp_path / 'ckpt.pth'
    source = timm.create_model('sgconvnext_atto', img_size=64)
    torch.save(source.state_dict(), path)
    loaded = plot_kernels.build_model('sgconvnext_atto', 224, str(path))
    (_, kernels, _), *_ = plot_kernels.stage_kernels(loaded)
    torch.testing.assert_close(kernels, source.stages[0].blocks[0].conv_dw.materialize(16, 16).detach().double())


@pytest.mark.parametrize('model_name', ['sgconvnext_atto', 'convnext_atto'])
def test_plot_kernels_draws_a_checkpoint_trained_for_another_class_count(tmp_path, model_name):
    torch.manual_seed(123)  # not build_model's seed: the drawn weights must come from the file
    source = plot_kernels.create_model_for_size(model_name, 64, num_classes=10)  # e.g. a Fashion-MNIST run
    path = tmp_path / 'ckpt.pth'
    torch.save(source.state_dict(), path)
    loaded = plot_kernels.build_model(model_name, 64, str(path))
    for i, ((_, drawn, _), stage) in enumerate(zip(plot_kernels.stage_kernels(loaded), source.stages)):
        mixer, side = stage.blocks[0].conv_dw, 64 // (4 * 2 ** i)  # stage i's map side at 64 px
        expected = mixer.materialize(side, side) if isinstance(mixer, SGConv2d) else mixer.weight[:, 0]
        torch.testing.assert_close(drawn, expected.detach().double())


@pytest.mark.parametrize('resize', ['fixed', 'stretch'])
def test_plot_kernels_draws_one_layer_at_several_sizes(tmp_path, resize):
    model = plot_kernels.build_model('sgconvnext_atto', 64, resize=resize)
    (_, small, _), (_, large, _) = plot_kernels.size_kernels(model, [64, 128], stage=1)
    assert small.shape[-2:] == (15, 15) and large.shape[-2:] == (31, 31)  # 8x8 and 16x16 maps
    if resize == 'stretch':  # 2x per axis: every other tap is the built one, scaled by 1/2 per axis
        torch.testing.assert_close(large[:, 1::2, 1::2], small / 4)
    else:  # the built taps in the middle, zero around them
        torch.testing.assert_close(large[:, 8:-8, 8:-8], small)
        assert large[:, :8].abs().sum() == 0
    out = tmp_path / 'k.png'
    plot_kernels.main(['--model', 'sgconvnext_atto', '--img-size', '64', '--sizes', '64', '128', '256', '--stage', '1',
                       '--resize', resize, '--channels', '3', '--cell', '20', '--out', str(out)])
    with Image.open(out) as image:
        assert image.size == plot_kernels.canvas_size(3, 3, 20)  # a row per size


def test_plot_kernels_refuses_an_unknown_image_extension_and_writes_nothing(tmp_path):
    with pytest.raises(SystemExit, match=r"image extension such as \.png, got '.*k\.txt'"):
        plot_kernels.main(['--model', 'sgconvnext_atto', '--img-size', '64', '--out', str(tmp_path / 'k.txt')])
    assert os.listdir(tmp_path) == []


def test_bench_revisions_swaps_in_the_layer_of_another_revision_with_the_same_weights(tmp_path, capsys):
    import bench_revisions
    layer_class = bench_revisions.load_revision_layer('HEAD')
    assert layer_class.__module__ == 'sgconvnext_at_revision.sgconv' and layer_class is not SGConv2d
    torch.manual_seed(0)
    model = timm.create_model('sgconvnext_atto', img_size=32).eval()
    swapped = bench_revisions.with_revision_layers(model, layer_class)
    kinds = {type(m).__module__ for m in swapped.modules() if type(m).__name__ == 'SGConv2d'}
    assert kinds == {'sgconvnext_at_revision.sgconv'}
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(swapped(x), model(x), rtol=0, atol=0)  # HEAD's code is this code: the same
    report = tmp_path / 'B.md'
    bench_revisions.main(['--rev', 'HEAD', '--model', 'sgconvnext_atto', '--img-size', '32', '--batch-size', '2',
                          '--warmup', '0', '--steps', '1', '--write', str(report)])
    rows = [line for line in report.read_text().splitlines() if line.startswith('| convnext') or 'sgconvnext_atto (' in line]
    assert len(rows) == 3 and rows[0].startswith('| convnext_atto | ') and '(1.000)' in rows[0]
