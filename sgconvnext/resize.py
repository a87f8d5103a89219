"""Size policies: how an axis kernel built for ``l_max`` taps per side meets a map of another length L.

A layer is built for one map size (the stage's map at the model's ``img_size``), but runs at any size. Two
readings of the same parameters:

* ``"fixed"``: tap t means "t pixels away". On a larger map the taps at ``|t| >= l_max`` are zero (each output
  sees at most ``l_max - 1`` pixels away: not global any more); on a smaller one the kernel is cut to the map.
* ``"stretch"``: the kernel is a curve over the *relative* offset t / L (S4ND's and GFNet's reading). At length
  L it is resampled at step ``r = l_max / L`` and its taps are scaled by r, so it spans the whole map at every
  size and a smooth image upsampled by s gives about the upsampled output. Growing (r < 1): linear
  interpolation of the built taps (zero at ``|t| = l_max``). Shrinking (r > 1): a triangle filter of half-width r
  over the built taps, the low-pass that keeps the coarser sampling from aliasing (S4ND's "bandlimit" step). Both
  are one weight per (built tap, new tap), ``r / a * max(0, 1 - |t - s r| / a)`` with ``a = max(r, 1)``; at r = 1
  it is the identity. Shrinking, each built tap the new kernel reaches (``|t| <= l_max - r``) is shared out
  with total weight 1, so the kernel's sum is kept but for the outermost taps, which fall past the map.

Resampling is linear in the taps, hence in the parameters: at length L the kernel is ``weight @ basis @ S_L``
with the fixed matrix ``S_L`` of ``stretch_matrix`` (cached per length by the kernel module).
"""
from typing import Optional

import torch

from .checks import check_choice

__all__ = ['RESIZE_POLICIES', 'DEFAULT_RESIZE', 'check_resize', 'stretch_matrix']

RESIZE_POLICIES = ('fixed', 'stretch')
DEFAULT_RESIZE = 'stretch'  # chosen from docs/RESULTS.md (resolution transfer)


def check_resize(value) -> str:
    """``value`` if it names a policy, else a TypeError / ValueError that lists the choices."""
    return check_choice('resize', value, RESIZE_POLICIES)


def stretch_matrix(l_max: int, length: int, dtype: torch.dtype = torch.float64,
                   device: Optional[torch.device] = None) -> torch.Tensor:
    """(2 * l_max - 1, 2 * length - 1) matrix S: a centred kernel k built for ``l_max`` -> ``k @ S`` at ``length``.

    Row j is the built tap at offset ``j - (l_max - 1)``, column i the new tap at offset ``s = i - (length - 1)``,
    which samples the built kernel's curve at offset ``s * l_max / length`` (see the module docstring).
    """
    r = l_max / length
    a = max(r, 1.0)
    built = torch.arange(2 * l_max - 1, dtype=dtype, device=device) - (l_max - 1)
    new = (torch.arange(2 * length - 1, dtype=dtype, device=device) - (length - 1)) * r
    return (r / a) * (1 - (built.unsqueeze(1) - new.unsqueeze(0)).abs() / a).clamp_min(0)
