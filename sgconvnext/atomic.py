"""Whole-file writes (``atomic_open``): the torch-free ``sgconvnext_cli``'s."""
from sgconvnext_cli.atomic import atomic_open

__all__ = ['atomic_open']
