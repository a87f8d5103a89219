"""Write files whole or not at all: a temporary file next to the target, renamed onto it when complete."""
import contextlib
import os
import tempfile

__all__ = ['atomic_open']


@contextlib.contextmanager
def atomic_open(path: str, mode: str = 'w', **kwargs):
    """``open(path, mode)`` whose result appears at ``path`` only when the ``with`` block completes.

    An exception or a kill inside the block leaves any previous file at ``path`` untouched and no
    temporary file behind (on an exception). ``mode`` is ``'w'`` or ``'wb'``; kwargs go to ``open``.
    """
    if mode not in ('w', 'wb'):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; these files are meant to be read
        os.replace(tmp, path)  # atomic: path holds the old file or the new one, never a partial one
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
