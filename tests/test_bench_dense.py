"""tools/bench_dense.py at toy sizes: every bench runs and the report has its rows and verdicts."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools'))

import bench_dense  # noqa: E402


@pytest.mark.slow
def test_bench_dense_reports_every_bench_at_toy_sizes(tmp_path, capsys):
    out = tmp_path / 'b.md'
    rows = bench_dense.main(['--threads', '1', '--models', 'convnext_atto', 'sgconvnext_atto', '--det-size', '96x64',
                             '--wide-size', '128x32', '--det-images', '70x64', '60x64', '--canvas', '96',
                             '--seg-size', '32', '--seg-batch', '1', '--warmup', '0', '--runs', '1',
                             '--write', str(out)])
    assert len(rows) == 8 and all(r[2] is not None and r[3] is not None for r in rows)
    text = out.read_text()
    assert '<!-- bench_dense:dense:start -->' in text and '| det train step, s | 2x96x64 (70x64, 60x64) |' in text
    assert 'Goal ' in capsys.readouterr().out


def test_sizes_are_width_by_height():
    args = bench_dense.parse_args(['--det-size', '1280x800', '--det-images', '1333x800'])
    assert args.det_size == (800, 1280) and args.det_images == [(800, 1333)]
    with pytest.raises(SystemExit):
        bench_dense.parse_args(['--det-size', '1280'])
