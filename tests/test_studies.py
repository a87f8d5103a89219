"""The studies plan the documented commands (dry run: nothing runs, nothing is written but OUT)."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, 'studies', 'pathfinder'), os.path.join(ROOT, 'studies', 'conversion')]

import conversion_study  # noqa: E402
import pathfinder_study  # noqa: E402


def test_pathfinder_study_plans_data_with_knobs_and_the_same_flags_for_every_model(tmp_path, capsys):
    pathfinder_study.main(['--data-root', str(tmp_path / 'data'), '--out', str(tmp_path / 'out'), '--sizes', '64',
                           '--difficulties', 'easy:dashes=4,distractors=1', 'hard', '--epochs', '64=3',
                           '--seeds', '0', '1', '--models', 'sgconvnext_atto', 'convnext_atto:kernel_sizes=15',
                           '--dry-run'])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith('[dry] ')]
    data = [line for line in lines if 'make_pathfinder.py' in line]
    train = [line for line in lines if 'train_imagenet.py' in line]
    assert len(data) == 2 and len(train) == 2 * 2 * 2  # 2 data sets; 2 difficulties x 2 models x 2 seeds
    knobbed = str(tmp_path / 'data' / 'pf64_easy-dashes4-distractors1')
    assert f'--out {knobbed} ' in data[0] and '--difficulty easy --dashes 4 --distractors 1 ' in data[0]
    assert '--difficulty hard --workers' in data[1]
    assert sum(f'--data-dir {knobbed} ' in line for line in train) == 4
    assert any('--experiment convnext_atto-kernel_sizes15-pf64-easy-dashes4-distractors1-seed1 ' in line
               and line.endswith('--model-kwargs kernel_sizes=15') for line in train)
    flags = {line.split(' --lr ')[0].split(' --img-size ')[1].split(' ', 3)[3] for line in train}
    assert len(flags) == 1  # every model and seed trains with the same flags
    assert not os.path.exists(tmp_path / 'data')


@pytest.mark.parametrize('flag, value, expected', [
    ('--difficulties', 'extreme', 'easy, medium, hard'),
    ('--difficulties', 'easy:dots=4', 'dashes, dash_length, dash_gap, distractors'),
    ('--difficulties', 'easy:dashes=four', 'KNOB=NUMBER'),
    ('--difficulties', 'easy:dashes', 'KNOB=NUMBER'),
    ('--models', 'convnext_atto:kernel_sizes', "KEY=VALUE pairs, got 'kernel_sizes'"),
    ('--models', 'convnext_atto:', 'nothing after ":"'),
])
def test_pathfinder_study_refuses_a_malformed_entry_naming_what_it_expects(tmp_path, capsys, flag, value, expected):
    with pytest.raises(SystemExit) as exc:
        pathfinder_study.main(['--data-root', str(tmp_path), '--out', str(tmp_path / 'out'), '--sizes', '64',
                               '--epochs', '64=1', flag, value, '--dry-run'])
    assert exc.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert flag in error and repr(value) in error and expected in error
    assert not os.path.exists(tmp_path / 'out')  # refused before anything is planned


def test_conversion_study_fine_tunes_every_start_with_the_same_flags(tmp_path, capsys):
    data = tmp_path / 'data'
    (data / 'train').mkdir(parents=True)
    conversion_study.main(['--data-dir', str(data), '--out', str(tmp_path / 'out'), '--seeds', '0', '1', '--dry-run'])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith('[dry] ')]
    converts = [line for line in lines if 'convert_convnext.py' in line]
    assert len(converts) == 4 and all('--model sgconvnext_atto --img-size 64' in line for line in converts)
    assert {line.split('--convert ')[1].split()[0] for line in converts} == {'rank1', 'none'}
    finetunes = [line for line in lines if '--initial-checkpoint' in line]
    assert len(finetunes) == 6  # teacher, rank1, none x 2 seeds
    assert all(line.endswith('--epochs 2 --lr 0.0005 --sched step --decay-rate 1 --warmup-epochs 0') for line in finetunes)
    starts = sorted(line.split('--initial-checkpoint ')[1].split()[0] for line in finetunes)
    out = str(tmp_path / 'out')
    assert starts[:2] == [f'{out}/converted/none-seed0.pth', f'{out}/converted/none-seed1.pth']
    assert starts[-2:] == [f'{out}/convnext_atto-64px-seed0/last.pth.tar', f'{out}/convnext_atto-64px-seed1/last.pth.tar']
    scratch = [line for line in lines if '--model sgconvnext_atto' in line and 'train_imagenet.py' in line
               and '--initial-checkpoint' not in line]
    assert len(scratch) == 2 and all('--epochs 8 --lr 0.002' in line for line in scratch)
