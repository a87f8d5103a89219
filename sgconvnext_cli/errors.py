"""One-line errors for the command-line tools: a problem the user can fix ends in ``PROG: error: MESSAGE``.

Standard library only, so the tools that need no model (studies/pathfinder/make_pathfinder.py,
tools/plot_runs.py) import it without importing torch (see this package's ``__init__``).
"""
import argparse
import os
import re
import sys

__all__ = ['CLIError', 'OneLineErrorParser', 'run_cli']


class CLIError(Exception):
    """A problem the user can fix (bad flag, missing data, diverged run): printed as one line, no traceback."""


def run_cli(main, argv=None) -> None:
    """Run ``main(argv)``; a CLIError exits with one line ``PROG: error: MESSAGE`` and status 1."""
    prog = os.path.basename(sys.argv[0]) or 'train_imagenet.py'
    try:
        main(argv)
    except CLIError as e:
        # One raised in a DataLoader worker arrives with the worker's traceback: its last line is the message.
        lines = str(e).strip().splitlines() or [type(e).__name__]
        message = re.sub(r'^[\w.]*Error: ', '', lines[-1])
        sys.exit(f'{prog}: error: {message}')
    except KeyboardInterrupt:
        sys.exit(f'{prog}: interrupted')


class OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of the usage block of ~100 flags
        raise CLIError(f'{message} (see --help)')
