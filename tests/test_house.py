"""The house rules of the code users read: no file over 400 lines, no function over 80 (argument parsers exempt).

Applies to the package, the user tools, the studies and the training script (tests are not counted)."""
import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80
PARSER_BUILDERS = {'build_parser', 'parse_args'}  # one add_argument per line: long by nature, read as a table


def sources():
    paths = [os.path.join(ROOT, 'train_imagenet.py')]
    for folder in ('sgconvnext', 'tools', 'studies'):
        paths += glob.glob(os.path.join(ROOT, folder, '**', '*.py'), recursive=True)
    return sorted(paths)


def test_the_rules_see_the_code():
    names = {os.path.relpath(p, ROOT) for p in sources()}
    assert {'train_imagenet.py', 'sgconvnext/sgconv.py', 'tools/benchmark.py',
            'studies/pathfinder/make_pathfinder.py'} <= names


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
