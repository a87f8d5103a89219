"""tools/gpu_report.sh in its reduced CPU mode (the GPU run's steps at toy sizes), and benchmark.py's memory
columns, --sg-tune and --plot."""
import os
import sys

import pytest
import timm
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, 'tools')
sys.path.insert(0, TOOLS)

import benchmark  # noqa: E402
import processes  # noqa: E402
from bench.memory import peak_memory_mb  # noqa: E402
import sgconvnext  # noqa: E402,F401

ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHON=sys.executable)


@pytest.mark.slow
def test_reduced_report_writes_every_section(tmp_path):
    out = tmp_path / 'report.md'
    out.write_text('# Benchmarks\n\nkept as it was\n')
    proc = processes.run(['bash', os.path.join(TOOLS, 'gpu_report.sh'), '--reduced', '--write', str(out)],
                         timeout=600, cwd=tmp_path, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert text.startswith('# Benchmarks\n\nkept as it was\n')
    sections = [line for line in text.splitlines() if line.endswith(':start -->')]
    assert sections == ['<!-- benchmark:reduced:pairs-eager:start -->', '<!-- benchmark:reduced:pairs-compile:start -->',
                        '<!-- benchmark:reduced:large-maps:start -->',
                        '<!-- bench_sgconv:cpu:bf16 autocast:channels_last:start -->']
    eager = text.split('pairs-eager:start')[1].split(':end')[0]
    rows = [line for line in eager.splitlines() if line.startswith('| 64 |') and ' / ' not in line]  # not the backends
    assert len(rows) == 2 and 'n/a' not in ''.join(rows)  # img/s and peak MiB for both models
    assert 'infer peak MiB | train peak MiB' in eager and 'bfloat16/train/cpu' in eager  # tuned under autocast
    assert 'torch.compile' in text.split('pairs-compile:start')[1].split(':end')[0]
    assert '| 128 | sgconvnext_atto' in text.split('large-maps:start')[1]


def test_report_refuses_bad_arguments_and_a_missing_gpu(tmp_path):
    bad = processes.run(['bash', os.path.join(TOOLS, 'gpu_report.sh'), '--fast'], timeout=60, env=ENV)
    assert bad.returncode == 2 and "unknown argument '--fast'" in bad.stderr
    if not torch.cuda.is_available():
        proc = processes.run(['bash', os.path.join(TOOLS, 'gpu_report.sh'), '--write', str(tmp_path / 'x.md')],
                             timeout=120, env=ENV)
        assert proc.returncode == 1 and 'no CUDA device here' in proc.stderr
        assert not (tmp_path / 'x.md').exists()


def training_peak(name, size, batch):
    torch.manual_seed(0)
    model = timm.create_model(name, **({'img_size': 224} if name.startswith('sg') else {}))
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def step():
        torch.nn.functional.cross_entropy(model(x), torch.zeros(batch, dtype=torch.long)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    peak = peak_memory_mb(step, torch.device('cpu'), model, optimizer)
    if peak is None:
        pytest.skip(f'peak_memory_mb measures nothing on CPU here: torch {torch.__version__} has no MemTracker')
    return peak


@pytest.mark.slow
@pytest.mark.parametrize('size,batch', [(224, 2), (512, 1)])
def test_a_training_step_holds_at_most_5_percent_more_than_convnext(size, batch):
    """Live tensor bytes at the peak of one step: the matmul backend saves only its input (sgconvnext/toeplitz.py)."""
    ratio = training_peak('sgconvnext_tiny', size, batch) / training_peak('convnext_tiny', size, batch)
    assert ratio <= 1.05, ratio


def test_plot_path_and_tune_flags_are_checked_first(capsys):
    with pytest.raises(SystemExit):
        benchmark.parse_args(['--plot', 'sweep.jpg', '--img-size', '64', '96'])
    assert '--plot: the picture must end in .png, .svg, .pdf' in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # nothing timed, nothing to tune for: refused before any model is built
        benchmark.parse_args(['--models', 'sgconvnext_atto', '--sg-tune', '--bench', 'flops'])
    assert exc.value.code == 2
    assert '--sg-tune tunes the backends of the timed steps: give --bench infer, train or all' in capsys.readouterr().err
    for bench in ('infer', 'train', 'all'):
        assert benchmark.parse_args(['--models', 'sgconvnext_atto', '--sg-tune', '--bench', bench]).sg_tune


def test_profile_mixer_times_every_stage_of_both_models(capsys):
    import profile_mixer
    profile_mixer.main(['--models', 'sgconvnext_atto', 'convnext_atto', '--img-size', '64', '--batch-size', '1',
                        '--runs', '1'])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith('| ') and 'atto' in line]
    assert [r.split(' | ')[0] for r in rows] == ['| sgconvnext_atto', '| convnext_atto']
    assert rows[1].count('(49)') == 4  # the 7x7: 49 multiply-adds per pixel at every stage
    stage0 = rows[0].split(' | ')[1]  # 16x16 at 64 px: matmul does 16 + 16, direct 31 + 31
    assert stage0.endswith('(32)') or stage0.endswith('(62)'), stage0


def test_sg_tune_reports_the_backends_and_macs_of_the_tuned_run(monkeypatch, capsys):
    """The stage table and the GMACs are taken after --sg-tune, in the timed run's layout and autocast dtype: a
    tuning that picks fft everywhere (auto's rules pick matmul or direct at these sizes) shows as fft."""
    tune_backends = sgconvnext.tune_backends

    def tune_to_fft(model, x, **kwargs):
        table = tune_backends(model, x, **kwargs)
        for layer in model.modules():
            if isinstance(layer, sgconvnext.SGConv2d):
                assert layer.tuned and all('/bfloat16/' in key for key in layer.tuned)  # tuned under --amp
                layer.tuned.update({key: 'fft' for key in layer.tuned})
        return table

    monkeypatch.setattr(sgconvnext, 'tune_backends', tune_to_fft)
    fast = ['--models', 'sgconvnext_atto', '--img-size', '32', '--device', 'cpu']
    tuned, = benchmark.main([*fast, '--bench', 'all', '--batch-size', '1', '--warmup', '0', '--steps', '1',
                             '--sg-tune', '--channels-last', '--amp', 'bf16'])
    assert [(s['infer'], s['train']) for s in tuned['auto_backends']] == [('fft', 'fft')] * 4
    report = capsys.readouterr().out
    assert 'as tuned by `--sg-tune`' in report and '| 32 | sgconvnext_atto | 8x8: fft / fft | 4x4: fft / fft |' in report
    fft, = benchmark.main([*fast, '--bench', 'flops', '--model-kwargs', 'sg_backend=fft'])
    assert (tuned['gmacs'], tuned['gmacs_train']) == (fft['gmacs'], fft['gmacs_train'])
