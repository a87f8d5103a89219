"""The ``"matmul"`` backend of SGConv2d: zero-padded separable convolution as two Toeplitz products.

Per channel c the convolution of an (H, W) map is ``Th[c] @ X @ Tw[c]^T`` with the Toeplitz matrices of the
two centred axis kernels. Batched matrix products want the channel outermost, so the work is mostly in
moving data between (B, C, H, W) layouts and (C, H, B, W); this module does those moves the cheap way:

* whole batch (default): x goes to (C, H, B, W) through contiguous NCHW, both products run over the whole
  batch, the result goes back to x's memory format. Its autograd Function saves the channel-major copy of x
  (made anyway, as large as x: what a depthwise conv saves) and the two axis kernels; the backward rebuilds the
  Toeplitz matrices and recomputes the first product. (Until 2026-12-02 it saved x and redid the copy: the same
  memory for two more copies per layer; the whole training step's time did not differ beyond run-to-run noise.)
* image by image (CPU, channels_last input, batch > 1, large maps): each image is moved, multiplied and
  written back while it is still in cache, and the backward recomputes the first product instead of saving it.

TorchScript, torch.jit.trace, torch.compile and export (ONNX included) run the whole-batch products as plain
ops: the same function, without the two Functions (which they cannot see into) or the per-image loop (which
would fix the batch size in a graph).
"""
from typing import Optional

import torch

from .runtime import autocast_on, exporting_onnx, in_graph_capture

__all__ = ['toeplitz_conv2d', 'is_channels_last', 'PER_IMAGE_MIN_PIXELS']

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
    if not torch.jit.is_scripting() and exporting_onnx():
        # torch.onnx's TorchScript-based exporter fails on unfold once the batch axis is dynamic: a gather instead
        i = torch.arange(n, device=kernel.device)
        return kernel[:, (n - 1) + i.unsqueeze(1) - i.unsqueeze(0)]
    return kernel.flip(-1).unfold(-1, n, 1).flip(-2)


def _to_channel_major(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in any layout -> contiguous (C, H, B, W)."""
    # Through contiguous NCHW: two plain copies beat one transposing copy from channels_last by up to 3x
    # on CPU (56x56 maps), as every "direct" permute from (B, H, W, C) memory strides badly.
    return x.contiguous().permute(1, 2, 0, 3).contiguous()


def _to_batch_major(y: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """(C, H, B, W) -> (B, C, H, W), channels_last or contiguous (through contiguous NCHW, as above)."""
    y = y.permute(2, 0, 1, 3).contiguous()
    return y.contiguous(memory_format=torch.channels_last) if channels_last else y


def _whole_batch(x: torch.Tensor, th: torch.Tensor, tw_t: torch.Tensor, bias: Optional[torch.Tensor],
                 channels_last: bool) -> torch.Tensor:
    """``th @ x @ tw_t (+ bias)`` per channel over the whole batch, as plain ops. x: (B, C, H, W); th: (C, H, H);
    tw_t: (C, W, W). Returns (B, C, H, W) in x's memory format."""
    return _channel_major_products(_to_channel_major(x), th, tw_t, bias, channels_last)


def _channel_major_products(xm: torch.Tensor, th: torch.Tensor, tw_t: torch.Tensor, bias: Optional[torch.Tensor],
                            channels_last: bool) -> torch.Tensor:
    """``_whole_batch`` from x already moved to channel-major (C, H, B, W)."""
    c, h, b, w = xm.shape[0], xm.shape[1], xm.shape[2], xm.shape[3]
    # Th @ (H, B*W), then (H*B, W) @ Tw^T: per-channel GEMMs with the batch folded in, and no copy between
    # them. The bias rides on the second product.
    y = torch.bmm(th, xm.view(c, h, b * w)).view(c, h * b, w)
    if bias is None:
        y = torch.bmm(y, tw_t)
    else:
        y = torch.baddbmm(bias.view(c, 1, 1), y, tw_t)
    return _to_batch_major(y.view(c, h, b, w), channels_last)


def _kernel_grad(kernel: torch.Tensor, n: int, grad_t: torch.Tensor) -> torch.Tensor:
    """The gradient of a centred kernel (C, 2n-1) from that of its Toeplitz matrix (C, n, n): diagonal sums."""
    with torch.enable_grad():
        k = kernel.detach().requires_grad_()
        return torch.autograd.grad(_toeplitz(k, n), k, grad_t)[0]


class _ToeplitzFunction(torch.autograd.Function):
    """Toeplitz products that save as much as ConvNeXt's depthwise conv saves, one tensor the size of the input x
    (x itself, or its channel-major copy that the forward made anyway), and the two small axis kernels (C, 2n-1):
    the backward rebuilds the Toeplitz matrices (as large as x itself at batch 1) and recomputes the first product
    instead of keeping it. So a training step holds no more activation memory than with a 7x7 conv. Gradients are
    those of the same products, in the forward's compute dtype (autocast's, where it is on). Subclasses: the whole
    batch at once, image by image."""

    @staticmethod
    def products(x, th, tw_t, bias, channels_last):
        """(the output, the x-sized tensor the backward reads)."""
        raise NotImplementedError

    @staticmethod
    def matrix_grads(ctx, saved, th, tw_t, grad):
        """(grad of x, of th, of tw_t), each None where not needed."""
        raise NotImplementedError

    @classmethod
    def forward(cls, ctx, x, kh, kw, bias, channels_last):
        h, w = x.shape[2], x.shape[3]
        y, saved = cls.products(x, _toeplitz(kh, h), _toeplitz(kw, w).transpose(-1, -2), bias, channels_last)
        ctx.save_for_backward(saved, kh, kw)
        ctx.has_bias, ctx.channels_last, ctx.compute_dtype = bias is not None, channels_last, y.dtype
        ctx.x_shape, ctx.x_dtype = x.shape, x.dtype
        return y

    @classmethod
    def backward(cls, ctx, grad):
        saved, kh, kw = ctx.saved_tensors
        h, w = ctx.x_shape[2], ctx.x_shape[3]
        dtype = ctx.compute_dtype
        th, tw_t = _toeplitz(kh.to(dtype), h), _toeplitz(kw.to(dtype), w).transpose(-1, -2)
        grad_x, grad_th, grad_tw_t = cls.matrix_grads(ctx, saved.to(dtype), th, tw_t, grad.to(dtype))
        grad_kh = _kernel_grad(kh, h, grad_th.to(kh.dtype)) if grad_th is not None else None
        grad_kw = _kernel_grad(kw, w, grad_tw_t.transpose(-1, -2).to(kw.dtype)) if grad_tw_t is not None else None
        grad_bias = grad.sum((0, 2, 3)) if ctx.has_bias and ctx.needs_input_grad[3] else None
        return None if grad_x is None else grad_x.to(ctx.x_dtype), grad_kh, grad_kw, grad_bias, None


class _WholeBatch(_ToeplitzFunction):
    @staticmethod
    def products(x, th, tw_t, bias, channels_last):
        xm = _to_channel_major(x)  # kept for the backward: no copy to redo there
        return _channel_major_products(xm, th, tw_t, bias, channels_last), xm

    @staticmethod
    def matrix_grads(ctx, xm, th, tw_t, grad):
        need_x, need_th, need_tw = ctx.needs_input_grad[:3]
        c, h, b, w = xm.shape
        g = _to_channel_major(grad).view(c, h * b, w)                       # dL/dy, (C, H*B, W)
        xm = xm.view(c, h, b * w)
        grad_tw_t = None
        if need_tw:  # y1 = th @ xm, recomputed
            grad_tw_t = torch.bmm(torch.bmm(th, xm).view(c, h * b, w).transpose(1, 2), g)
        grad_y1 = torch.bmm(g, tw_t.transpose(1, 2)).view(c, h, b * w)      # dL/dy1
        del g
        grad_th = torch.bmm(grad_y1, xm.transpose(1, 2)) if need_th else None
        del xm
        grad_x = None
        if need_x:
            grad_x = _to_batch_major(torch.bmm(th.transpose(1, 2), grad_y1).view(c, h, b, w), ctx.channels_last)
        return grad_x, grad_th, grad_tw_t


def _image_products(x: torch.Tensor, th: torch.Tensor, tw_t: torch.Tensor, bias: Optional[torch.Tensor],
                    channels_last: bool = True) -> torch.Tensor:
    """``th @ x[i] @ tw_t (+ bias)`` image by image, into a tensor like x. x: (B, C, H, W)."""
    c, h, w = x.shape[1:]
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        xi = x[i].contiguous().view(c, h, w)  # (C, H, W); from channels_last a single 2-D transpose
        yi = torch.bmm(th, xi)
        yi = torch.bmm(yi, tw_t) if bias is None else torch.baddbmm(bias.view(c, 1, 1), yi, tw_t)
        out[i].copy_(yi)
    return out


class _ImageByImage(_ToeplitzFunction):
    @staticmethod
    def products(x, th, tw_t, bias, channels_last):
        return _image_products(x, th, tw_t, bias, channels_last), x

    @staticmethod
    def matrix_grads(ctx, x, th, tw_t, grad):
        need_x, need_th, need_tw = ctx.needs_input_grad[:3]
        c, h, w = x.shape[1:]
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
        return grad_x, grad_th, grad_tw_t


def toeplitz_conv2d(x: torch.Tensor, kh: torch.Tensor, kw: torch.Tensor,
                    bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Zero-padded separable convolution by two batched Toeplitz products, plus an optional bias.

    x: (B, C, H, W); kh: (C, 2H-1); kw: (C, 2W-1) centred kernels; bias: (C,). Returns (B, C, H, W) in
    x's memory format (contiguous or channels_last), so a channels_last block needs no extra copy.
    """
    h, w = x.shape[2], x.shape[3]
    channels_last = is_channels_last(x)
    kh, kw = kh.to(x.dtype), kw.to(x.dtype)
    if bias is not None:
        bias = bias.to(x.dtype)
    if torch.jit.is_scripting():
        return _whole_batch(x, _toeplitz(kh, h), _toeplitz(kw, w).transpose(-1, -2), bias, channels_last)
    return _toeplitz_eager(x, kh, kw, bias, channels_last)


@torch.jit.unused
def _toeplitz_eager(x, kh, kw, bias, channels_last: bool) -> torch.Tensor:
    captured = in_graph_capture()
    b, h, w = x.shape[0], x.shape[2], x.shape[3]
    # Autocast would run the products in low precision, which the image-by-image output buffer (x's dtype)
    # does not follow: leave autocast to the whole-batch path.
    per_image = (channels_last and b > 1 and h * w >= PER_IMAGE_MIN_PIXELS and x.device.type == 'cpu'
                 and not captured and not autocast_on('cpu'))
    # The autograd Functions save less for the backward; plain ops compute the same and are used without grad
    # and in graphs (jit.trace and fvcore see Functions as opaque Python ops).
    if torch.is_grad_enabled() and not captured and any(
            t is not None and t.requires_grad for t in (x, kh, kw, bias)):
        return (_ImageByImage if per_image else _WholeBatch).apply(x, kh, kw, bias, channels_last)
    products = _image_products if per_image else _whole_batch
    return products(x, _toeplitz(kh, h), _toeplitz(kw, w).transpose(-1, -2), bias, channels_last)
