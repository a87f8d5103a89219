"""Independent references the tests compare against (built without the package's fast paths)."""
import numpy as np
import torch
import torch.nn.functional as F


def reference_axis_kernel(kernel_module, length: int, resize=None) -> torch.Tensor:
    """The centred (C, 2*length-1) kernel at ``length`` under the module's size policy (or ``resize``).

    "fixed": the built kernel cut or zero-padded to ``length``. "stretch": the built kernel's curve (its taps
    joined by straight lines, zero at +-l_max) sampled at step r = l_max / length with np.interp and scaled by
    r when growing; when shrinking, each new tap is the triangle-weighted sum (half-width r) of the built taps.
    """
    resize = resize or kernel_module.resize
    l_max = kernel_module.l_max
    if resize == 'fixed' or length == l_max:
        return _fixed_axis_kernel(kernel_module, length)
    built = _fixed_axis_kernel(kernel_module, l_max)  # (C, 2 l_max - 1), offsets -(l_max-1) .. l_max-1
    offsets = np.arange(-(l_max - 1), l_max)
    curve_x = np.concatenate([[-l_max], offsets, [l_max]])
    r = l_max / length
    weights = np.zeros((2 * l_max - 1, 2 * length - 1))  # built tap j -> new tap i; linear in the taps
    for i, s in enumerate(range(-(length - 1), length)):
        if r < 1:
            for j in range(2 * l_max - 1):
                unit = np.zeros(2 * l_max + 1)
                unit[j + 1] = 1.0
                weights[j, i] = r * np.interp(s * r, curve_x, unit)
        else:
            weights[:, i] = np.maximum(0.0, 1.0 - np.abs(offsets - s * r) / r)
    return built @ torch.from_numpy(weights).to(built.dtype)


def _fixed_axis_kernel(kernel_module, length: int) -> torch.Tensor:
    """Centred (C, 2*length-1) kernel built scale by scale with F.interpolate, as the SGConv paper's code does."""
    w = kernel_module.weight  # (C, 2, n_scales, d)
    sides = []
    for side in range(2):
        pieces = []
        for i in range(kernel_module.n_scales):
            sub = w[:, side, i].unsqueeze(1)  # (C, 1, d)
            stretched = F.interpolate(sub, scale_factor=2 ** max(0, i - 1), mode='linear', align_corners=False)
            pieces.append(stretched.squeeze(1) * kernel_module.decay ** i)
        k = torch.cat(pieces, dim=-1)[:, :kernel_module.l_max] / kernel_module.norm.unsqueeze(-1)
        k = F.pad(k, (0, max(0, length - k.shape[-1])))[:, :length]  # zero past l_max, cut to length
        sides.append(k)
    positive, negative = sides
    centre = positive[:, :1] + negative[:, :1]
    return torch.cat([negative[:, 1:].flip(-1), centre, positive[:, 1:]], dim=-1)


def direct_conv(x: torch.Tensor, kernel_2d: torch.Tensor, bias=None) -> torch.Tensor:
    """Sliding-window 'same' convolution of (B, C, H, W) with a centred (C, 2H-1, 2W-1) kernel."""
    h, w = x.shape[-2:]
    y = F.conv2d(x, kernel_2d.flip(-1, -2).unsqueeze(1), padding=(h - 1, w - 1), groups=x.shape[1])
    return y if bias is None else y + bias.view(1, -1, 1, 1)


def reference_sgconv(layer, x: torch.Tensor) -> torch.Tensor:
    """The layer's function computed from the independently built axis kernels, by direct convolution."""
    h, w = x.shape[-2:]
    kh = reference_axis_kernel(layer.kernel_h, h)
    kw = reference_axis_kernel(layer.kernel_w, w)
    return direct_conv(x, kh.unsqueeze(-1) * kw.unsqueeze(-2), layer.bias)
