"""atomic_open: a file appears whole or not at all."""
import os

import pytest

from sgconvnext.atomic import atomic_open


def test_writes_the_file_readable_by_others(tmp_path):
    path = tmp_path / 'sub' / 'out.json'
    with atomic_open(str(path)) as f:
        f.write('{"a": 1}')
    assert path.read_text() == '{"a": 1}'
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert os.listdir(path.parent) == ['out.json']


def test_an_error_midway_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / 'out.png'
    path.write_bytes(b'old')
    with pytest.raises(RuntimeError, match='disk full'):
        with atomic_open(str(path), 'wb') as f:
            f.write(b'new, half')
            raise RuntimeError('disk full')
    assert path.read_bytes() == b'old'
    assert os.listdir(tmp_path) == ['out.png']


def test_refuses_modes_that_are_not_whole_writes(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb', got 'a'"):
        with atomic_open(str(tmp_path / 'x'), 'a'):
            pass
