"""What the backends branch on besides sizes: autocast, torch.compile, tracing and ONNX export.

Each check is ``torch.jit.unused``: TorchScript cannot compile them, so scripted code guards every call with
``torch.jit.is_scripting()``.
"""
import torch

__all__ = ['autocast_on', 'is_compiling', 'exporting_onnx', 'in_graph_capture']


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
def is_compiling() -> bool:
    """Under torch.compile (dynamo) tracing."""
    compiler = getattr(torch, 'compiler', None)
    if compiler is not None and hasattr(compiler, 'is_compiling'):
        return compiler.is_compiling()
    return torch._dynamo.is_compiling()  # torch < 2.3


@torch.jit.unused
def exporting_onnx() -> bool:
    return torch.onnx.is_in_onnx_export()


@torch.jit.unused
def in_graph_capture() -> bool:
    """Compiled, traced (torch.jit.trace, fvcore) or exported to ONNX: a graph is being recorded."""
    return is_compiling() or torch.jit.is_tracing() or exporting_onnx()
