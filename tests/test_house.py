"""The house rules of the code users read: no file over 400 lines, no function over 80 (argument parsers exempt).

Applies to the package, the user tools, the studies and the training script (tests are not counted)."""
import ast
import glob
import os
import sys

import pytest

import processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80
PARSER_BUILDERS = {'build_parser', 'parse_args'}  # one add_argument per line: long by nature, read as a table


def sources():
    paths = [os.path.join(ROOT, 'train_imagenet.py')]
    for folder in ('sgconvnext', 'sgconvnext_cli', 'tools', 'studies'):
        paths += glob.glob(os.path.join(ROOT, folder, '**', '*.py'), recursive=True)
    return sorted(paths)


def test_the_rules_see_the_code():
    names = {os.path.relpath(p, ROOT) for p in sources()}
    assert {'train_imagenet.py', 'sgconvnext/sgconv.py', 'tools/benchmark.py',
            'studies/pathfinder/make_pathfinder.py', 'sgconvnext_cli/errors.py', 'tools/bench/report.py'} <= names


def test_no_file_over_400_lines():
    long = {os.path.relpath(p, ROOT): n for p in sources() if (n := len(open(p).read().splitlines())) > MAX_FILE_LINES}
    assert not long, f'files over {MAX_FILE_LINES} lines: {long}'


def test_no_function_over_80_lines():
    long = []
    for path in sources():
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name not in PARSER_BUILDERS:
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f'{os.path.relpath(path, ROOT)}:{node.lineno} {node.name} ({lines} lines)')
    assert not long, f'functions over {MAX_FUNCTION_LINES} lines:\n' + '\n'.join(long)


LIGHT_TOOLS = ('studies/resolution/make_fashion_mnist.py', 'studies/pathfinder/make_pathfinder.py', 'tools/plot_runs.py')


@pytest.mark.parametrize('tool', LIGHT_TOOLS)
def test_the_tools_that_need_no_model_import_neither_torch_nor_timm(tool, tmp_path):
    """They import sgconvnext_cli (standard library only), not sgconvnext, whose import registers the models."""
    code = ('import importlib.util, os, sys; sys.path[0] = os.path.dirname(sys.argv[1]); '  # as when run as a script
            'spec = importlib.util.spec_from_file_location("tool", sys.argv[1]); '
            'spec.loader.exec_module(importlib.util.module_from_spec(spec)); '
            'print(sorted(m for m in ("torch", "timm", "sgconvnext") if m in sys.modules))')
    done = processes.run([sys.executable, '-c', code, os.path.join(ROOT, tool)], timeout=60, cwd=tmp_path)  # outside the checkout: the tool finds it by its own path
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '[]'


def test_the_library_and_the_light_tools_share_one_cli_error():
    import sgconvnext.atomic
    import sgconvnext.cli
    import sgconvnext_cli
    assert sgconvnext.cli.CLIError is sgconvnext_cli.CLIError and sgconvnext.cli.run_cli is sgconvnext_cli.run_cli
    assert sgconvnext.atomic.atomic_open is sgconvnext_cli.atomic_open
