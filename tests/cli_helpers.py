"""Helpers for the tests that run the command-line scripts in-process."""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(relative_path: str, name: str):
    """Import a script of the checkout (``train_imagenet.py``, ``tools/validate.py``, ...) as module ``name``."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, relative_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_line_error(run_cli, main, *argv, prefix: str = 'error: ') -> str:
    """Run ``main`` through ``run_cli``: it must exit with exactly one line, containing ``prefix``; that line."""
    with pytest.raises(SystemExit) as exc:
        run_cli(main, [str(a) for a in argv])
    message = str(exc.value.code)
    assert prefix in message and '\n' not in message, message
    return message
