"""The standard-library part of sgconvnext, importable without torch or timm: one-line errors for command-line
tools (``CLIError``, ``OneLineErrorParser``, ``run_cli``) and whole-file writes (``atomic_open``).

``import sgconvnext`` registers the models with timm, so it imports timm and torch (several seconds), and Python
runs a package's ``__init__`` before any module under it: nothing inside ``sgconvnext`` can be torch-free. The
data and plotting tools that need no model (studies/*/make_*.py, tools/plot_runs.py) import this package instead;
``sgconvnext.cli`` and ``sgconvnext.atomic`` are these same objects, so there is one ``CLIError`` class.
"""
from .atomic import atomic_open
from .errors import CLIError, OneLineErrorParser, run_cli

__all__ = ['CLIError', 'OneLineErrorParser', 'run_cli', 'atomic_open']
