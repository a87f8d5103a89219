"""The ``"matmul"`` backend of SGConv2d: zero-padded separable convolution as two Toeplitz products.

Per channel c the convolution of an (H, W) map is ``Th[c] @ X @ Tw[c]^T`` with the Toeplitz matrices of the
two centred axis kernels. Batched matrix products want the channel outermost, so the work is mostly in
moving data between (B, C, H, W) layouts and (C, H, B, W); this module does those moves the cheap way:

* whole batch (default): x goes to (C, H, B, W) through contiguous NCHW, both products run over the whole
  batch, the result goes back to x's memory format. Two autograd Functions route the gradients' layout
  copies the same cheap way.
* image by image (CPU, channels_last input, batch > 1, large maps): each image is moved, multiplied and
  written back while it is still in cache, and the backward recomputes the first product instead of saving it.

TorchScript, torch.jit.trace, torch.compile and export (ONNX included) run the whole-batch products as plain
ops: the same function, without the two Functions (which they cannot see into) or the per-image loop (which
would fix the batch size in a graph).
"""
from typing import Optional

import torch

__all__ = ['toeplitz_conv2d', 'is_channels_last', 'autocast_on', 'PER_IMAGE_MIN_PIXELS']

# Image by image when H*W >= this, on CPU with channels_last input. Measured on a 2-core CPU
# (forward + backward / 7x7 depthwise conv, tools/bench_sgconv.py shapes): at 56x56 (C=96, B=8 and 16)
# 1.07-1.15 image by image against 1.10-1.91 whole batch (which moves ~20 MB tensors in and out of memory
# eight times), and sgconvnext_tiny's training step took 4-7 % less time (in-process A/B, batch 8 and 16);
# at 28x28 whole batch won (0.87-0.90 against 0.95-1.18). On NCHW input whole batch won at every stage size.
# A batch of one is already a single image: there the whole-batch path, which saves its first product, was
# faster (128x128 and 256x256, 1.6-1.8 against 2.2-2.3).
PER_IMAGE_MIN_PIXELS = 2048


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether a (B, C, H, W) tensor is laid out channels_last (and not also plain contiguous, as 1x1 maps are)."""
    return x.shape[1] > 1 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _toeplitz(kernel: torch.Tensor, n: int) -> torch.Tensor:
    """(C, 2n-1) centred kernel -> (C, n, n) matrix T with ``T[c, i, j] = kernel[c, n - 1 + i - j]``."""
    if not torch.jit.is_scripting() and _exporting_onnx():
        # torch.onnx's TorchScript-based exporter fails on unfold once the batch axis is dynamic: a gather instead
        i = torch.arange(n, device=kernel.device)
        return kernel[:, (n - 1) + i.unsqueeze(1) - i.unsqueeze(0)]
    return kernel.flip(-1).unfold(-1, n, 1).flip(-2)


@torch.jit.unused
def _exporting_onnx() -> bool:
    return torch.onnx.is_in_onnx_export()


def _to_channel_major(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in any layout -> contiguous (C, H, B, W)."""
    # Through contiguous NCHW: two plain copies beat one transposing copy from channels_last by up to 3x
    # on CPU (56x56 maps), as every "direct" permute from (B, H, W, C) memory strides badly.
    return x.contiguous().permute(1, 2, 0, 3).contiguous()


def _to_batch_major(y: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """(C, H, B, W) -> (B, C, H, W), channels_last or contiguous (through contiguous NCHW, as above)."""
    y = y.permute(2, 0, 1, 3).contiguous()
    return y.contiguous(memory_format=torch.channels_last) if channels_last else y


class _ChannelMajor(torch.autograd.Function):
    """``_to_channel_major`` whose backward returns the gradient in the input's memory format."""

    @staticmethod
    def forward(ctx, x, channels_last):
        ctx.channels_last = channels_last
        return _to_channel_major(x)

    @staticmethod
    def backward(ctx, grad):
        return _to_batch_major(grad, ctx.channels_last), None


class _BatchMajor(torch.autograd.Function):
    """``_to_batch_major`` whose backward takes the gradient to (C, H, B, W) by the fast route."""

    @staticmethod
    def forward(ctx, y, channels_last):
        return _to_batch_major(y, channels_last)

    @staticmethod
    def backward(ctx, grad):
        return _to_channel_major(grad), None


def _whole_batch(x: torch.Tensor, th: torch.Tensor, tw_t: torch.Tensor, bias: Optional[torch.Tensor],
                 channels_last: bool, route_grads: bool) -> torch.Tensor:
    b, c, h, w = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    # Th @ (H, B*W), then (H*B, W) @ Tw^T: per-channel GEMMs with the batch folded in, and no copy between
    # them. The bias rides on the second product.
    if route_grads and x.requires_grad:
        xm = _channel_major_routed(x, channels_last)
    else:
        xm = _to_channel_major(x)
    y = torch.bmm(th, xm.view(c, h, b * w)).view(c, h * b, w)
    if bias is None:
        y = torch.bmm(y, tw_t)
    else:
        y = torch.baddbmm(bias.view(c, 1, 1), y, tw_t)
    y = y.view(c, h, b, w)
    if route_grads and y.requires_grad:
        return _batch_major_routed(y, channels_last)
    return _to_batch_major(y, channels_last)


@torch.jit.unused
def _channel_major_routed(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return _ChannelMajor.apply(x, channels_last)


@torch.jit.unused
def _batch_major_routed(y: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return _BatchMajor.apply(y, channels_last)


def _image_products(x: torch.Tensor, th: torch.Tensor, tw_t: torch.Tensor, bias: Optional[torch.Tensor],
                    out: torch.Tensor) -> torch.Tensor:
    """Write ``th @ x[i] @ tw_t (+ bias)`` into ``out[i]`` for every image i. x, out: (B, C, H, W)."""
    c, h, w = x.shape[1:]
    for i in range(x.shape[0]):
        xi = x[i].contiguous().view(c, h, w)  # (C, H, W); from channels_last a single 2-D transpose
        yi = torch.bmm(th, xi)
        yi = torch.bmm(yi, tw_t) if bias is None else torch.baddbmm(bias.view(c, 1, 1), yi, tw_t)
        out[i].copy_(yi)
    return out


class _ImageByImage(torch.autograd.Function):
    """Toeplitz products image by image; saves only x and the Toeplitz matrices for the backward."""

    @staticmethod
    def forward(ctx, x, th, tw_t, bias):
        ctx.save_for_backward(x, th, tw_t)
        ctx.has_bias = bias is not None
        return _image_products(x, th, tw_t, bias, torch.empty_like(x))

    @staticmethod
    def backward(ctx, grad):
        x, th, tw_t = ctx.saved_tensors
        c, h, w = x.shape[1:]
        need_x, need_th, need_tw, need_bias = ctx.needs_input_grad
        grad_x = torch.empty_like(x) if need_x else None
        grad_th = torch.zeros_like(th) if need_th else None
        grad_tw_t = torch.zeros_like(tw_t) if need_tw else None
        for i in range(x.shape[0]):
            xi = x[i].contiguous().view(c, h, w)
            gi = grad[i].contiguous().view(c, h, w)
            if need_tw:
                grad_tw_t.baddbmm_(torch.bmm(th, xi).transpose(1, 2), gi)  # y1 = th @ xi recomputed, not saved
            grad_y1 = torch.bmm(gi, tw_t.transpose(1, 2))
            if need_th:
                grad_th.baddbmm_(grad_y1, xi.transpose(1, 2))
            if need_x:
                grad_x[i].copy_(torch.bmm(th.transpose(1, 2), grad_y1))
        grad_bias = grad.sum((0, 2, 3)) if ctx.has_bias and need_bias else None
        return grad_x, grad_th, grad_tw_t, grad_bias


@torch.jit.unused
def autocast_on(device_type: str) -> bool:
    """Whether autocast is enabled for ``device_type`` (False for devices without autocast, such as meta)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device argument
        return torch.is_autocast_cpu_enabled() if device_type == 'cpu' else (
            device_type == 'cuda' and torch.is_autocast_enabled())
    except RuntimeError:  # "unknown device type for autocast"
        return False


@torch.jit.unused
def _in_graph_capture() -> bool:
    """Traced, compiled or exported: the Functions and the per-image loop are left out (module docstring)."""
    compiler = getattr(torch, 'compiler', None)
    compiling = compiler.is_compiling() if compiler is not None and hasattr(compiler, 'is_compiling') \
        else torch._dynamo.is_compiling()
    return compiling or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def toeplitz_conv2d(x: torch.Tensor, kh: torch.Tensor, kw: torch.Tensor,
                    bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Zero-padded separable convolution by two batched Toeplitz products, plus an optional bias.

    x: (B, C, H, W); kh: (C, 2H-1); kw: (C, 2W-1) centred kernels; bias: (C,). Returns (B, C, H, W) in
    x's memory format (contiguous or channels_last), so a channels_last block needs no extra copy.
    """
    h, w = x.shape[2], x.shape[3]
    channels_last = is_channels_last(x)
    th = _toeplitz(kh.to(x.dtype), h)                       # (C, H, H)
    tw_t = _toeplitz(kw.to(x.dtype), w).transpose(-1, -2)   # (C, W, W)
    if bias is not None:
        bias = bias.to(x.dtype)
    if torch.jit.is_scripting():
        return _whole_batch(x, th, tw_t, bias, channels_last, False)
    return _toeplitz_eager(x, th, tw_t, bias, channels_last)


@torch.jit.unused
def _toeplitz_eager(x, th, tw_t, bias, channels_last: bool) -> torch.Tensor:
    captured = _in_graph_capture()
    # The autograd Functions give the backward a cheaper route; plain ops compute the same and are used
    # without grad and in graphs (jit.trace and fvcore see Functions as opaque Python ops).
    grad_mode = torch.is_grad_enabled() and not captured
    # Autocast would run the products in low precision, which the image-by-image output buffer (x's dtype)
    # and its hand-written backward do not follow: leave autocast to the whole-batch path.
    b, h, w = x.shape[0], x.shape[2], x.shape[3]
    if (channels_last and b > 1 and h * w >= PER_IMAGE_MIN_PIXELS and x.device.type == 'cpu'
            and not captured and not autocast_on('cpu')):
        if grad_mode and any(t is not None and t.requires_grad for t in (x, th, tw_t, bias)):
            return _ImageByImage.apply(x, th, tw_t, bias)
        return _image_products(x, th, tw_t, bias, torch.empty_like(x))
    return _whole_batch(x, th, tw_t, bias, channels_last, grad_mode)
