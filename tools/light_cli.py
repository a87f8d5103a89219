"""One-line errors and whole-file writes for the tools that need no model: no torch, no timm.

``import sgconvnext`` imports torch and timm (several seconds) to register the models, and so does anything
under it. The data and plotting tools (make_pathfinder.py, plot_runs.py) need neither, so they load the two
standard-library modules they use straight from their files: ``sgconvnext/cli.py`` (``CLIError``,
``OneLineErrorParser``, ``run_cli``: a bad input ends in one ``PROG: error: MESSAGE`` line, exit status 1) and
``sgconvnext/atomic.py`` (``atomic_open``).
"""
import importlib.util
import os

__all__ = ['CLIError', 'OneLineErrorParser', 'run_cli', 'atomic_open']

_PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'sgconvnext')


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f'sgconvnext_{name}_standalone', os.path.join(_PACKAGE, f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_cli = _load('cli')
CLIError, OneLineErrorParser, run_cli = _cli.CLIError, _cli.OneLineErrorParser, _cli.run_cli
atomic_open = _load('atomic').atomic_open
