"""The Pathfinder study plans the documented commands (dry run: nothing runs, nothing is written but OUT)."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'studies', 'pathfinder'))

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
