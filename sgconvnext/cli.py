"""One-line errors for the command-line tools (``PROG: error: MESSAGE``): the torch-free ``sgconvnext_cli``'s."""
from sgconvnext_cli.errors import CLIError, OneLineErrorParser, run_cli

__all__ = ['CLIError', 'OneLineErrorParser', 'run_cli']
