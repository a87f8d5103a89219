"""tools/plot_runs.py: a PNG of learning curves from hand-written summary.csv files; every bad input refused."""
import os
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, 'tools', 'plot_runs.py')
sys.path[:0] = [os.path.join(ROOT, 'tools'), ROOT]

import plot_runs  # noqa: E402
from sgconvnext_cli import run_cli  # noqa: E402
from cli_helpers import one_line_error  # noqa: E402
import processes  # noqa: E402

HEADER = 'epoch,train_loss,eval_loss,eval_top1,eval_top5,lr\n'


def make_run(root, name, top1, loss, header=HEADER, extra=''):
    run = root / name
    run.mkdir()
    lines = [f'{e},{l},0.5,{t},100.0,0.001\n' for e, (t, l) in enumerate(zip(top1, loss))]
    (run / 'summary.csv').write_text(header + ''.join(lines) + extra)
    return str(run)


@pytest.fixture
def two_runs(tmp_path):
    return (make_run(tmp_path, 'sgconvnext_s0', [55.0, 71.5, 88.25], [0.69, 0.52, 0.31]),
            make_run(tmp_path, 'convnext_s0', [52.0, 58.0, 61.5], [0.69, 0.66, 0.63]))


def fail(*argv) -> str:
    """Run the CLI in-process; it must exit with exactly one line of error."""
    return one_line_error(run_cli, plot_runs.main, *argv, prefix=': error: ')


def test_writes_a_png_of_two_runs_and_a_table(two_runs, tmp_path, capsys):
    pytest.importorskip('matplotlib')
    out = tmp_path / 'pics' / 'curves.png'
    plot_runs.main([*two_runs, '--out', str(out), '--title', 'Pathfinder 64 px'])
    with Image.open(out) as img:
        assert img.format == 'PNG' and img.size == (11 * 120, round(4.2 * 120))
        pixels = np.asarray(img.convert('RGB')).reshape(-1, 3)
    for colour in ((31, 119, 180), (255, 127, 14)):  # a line of each run, in matplotlib's C0 and C1
        assert (pixels == colour).all(1).sum() > 100, colour
    table = capsys.readouterr().out
    assert '| sgconvnext_s0 |' in table and '| 88.25 (2) | 88.25 | 0.3100 |' in table
    assert '| convnext_s0 |' in table and '| 61.50 (2) | 61.50 | 0.6300 |' in table
    assert os.listdir(out.parent) == ['curves.png']  # no temporary file left


def test_labels_ema_and_svg(tmp_path, capsys):
    pytest.importorskip('matplotlib')
    header = 'epoch,train_loss,eval_loss,eval_top1,eval_top5,eval_ema_loss,eval_ema_top1,eval_ema_top5,lr\n'
    runs = []
    for name in ('a', 'b'):
        run = tmp_path / name
        run.mkdir()
        (run / 'summary.csv').write_text(header + '0,0.7,0.6,50,100,0.6,51,100,0.001\n'
                                                  '1,0.6,0.5,60,100,0.5,64.5,100,0.001\n')
        runs.append(str(run))
    out = tmp_path / 'c.svg'
    plot_runs.main([*runs, '--out', str(out), '--labels', 'seeds', 'seeds', '--ema'])
    svg = out.read_text()
    assert svg.count('seeds') == 1  # runs with one label share one legend entry
    assert 'eval_ema_top1' in svg and '| 64.50 (1) |' in capsys.readouterr().out


def test_refuses_a_folder_without_summary_and_writes_nothing(two_runs, tmp_path):
    empty = tmp_path / 'not_a_run'
    empty.mkdir()
    out = tmp_path / 'curves.png'
    message = fail(two_runs[0], empty, '--out', out)
    assert f'{empty} has no summary.csv' in message
    assert f'{tmp_path / "missing"} is not a folder' in fail(two_runs[0], tmp_path / 'missing', '--out', out)
    assert not out.exists()


@pytest.mark.parametrize('content, expected', [
    ('', 'is empty: no epoch rows'),
    (HEADER, 'is empty: no epoch rows'),
    (HEADER + '0,nan,0.5,50,100,0.001\n', "line 2: train_loss is 'nan', not a finite number"),
    (HEADER + '0,0.7,0.5,50,100,0.001\n1,0.6,0.5,inf,100,0.001\n', "line 3: eval_top1 is 'inf', not a finite number"),
    (HEADER + '0,0.7,0.5,,100,0.001\n', "line 2: eval_top1 is '', not a finite number"),
    ('epoch,train_loss,lr\n0,0.7,0.001\n', "has no eval_top1 column (a run with --val-split '' has no eval columns)"),
    (HEADER + '0,0.7,0.5,50,100,0.001\n0,0.6,0.5,55,100,0.001\n', 'lists epoch 0 twice'),
])
def test_bad_summaries_are_one_line_errors(tmp_path, content, expected):
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'summary.csv').write_text(content)
    message = fail(run, '--out', tmp_path / 'c.png')
    assert str(run / 'summary.csv') in message and expected in message
    assert not (tmp_path / 'c.png').exists()


def test_bad_flags_are_one_line_errors(two_runs, tmp_path):
    assert '--labels gives 1 labels for 2 runs' in fail(*two_runs, '--out', tmp_path / 'c.png', '--labels', 'x')
    assert "--out must end in .png, .svg or .pdf, got" in fail(*two_runs, '--out', tmp_path / 'c.jpg')
    assert 'the following arguments are required: --out' in fail(*two_runs)
    assert 'has no eval_ema_top1 column (pass --ema only for runs with --model-ema)' in fail(
        *two_runs, '--out', tmp_path / 'c.png', '--ema')


def test_without_matplotlib_it_says_how_to_install_it(two_runs, tmp_path):
    code = ("import runpy, sys; sys.modules['matplotlib'] = None; "  # makes `import matplotlib...` fail
            f"sys.argv = ['plot_runs.py', *{list(two_runs)!r}, '--out', {str(tmp_path / 'c.png')!r}]; "
            f"runpy.run_path({TOOL!r}, run_name='__main__')")
    done = processes.run([sys.executable, '-c', code], timeout=120, cwd=os.path.join(ROOT, 'tools'))
    assert done.returncode == 1
    assert done.stderr.strip() == ('plot_runs.py: error: plot_runs.py needs matplotlib, an optional extra: '
                                   'pip install matplotlib (or pip install .[plot], or pip install -r '
                                   'requirements-plot.txt)')
    assert not (tmp_path / 'c.png').exists()
