"""SGConvNeXt: ConvNeXt with a global multi-scale SGConv token mixer, as a timm model family.

Importing this package registers ``sgconvnext_{atto,femto,pico,nano,tiny,small,base,large}`` with timm.
"""
from .convert import convert_convnext
from .kernel import SGKernel1d
from .model import SGConvNeXt, add_kernel_geometry
from .sgconv import SGConv2d
from .tuning import format_backend_table, load_backend_table, save_backend_table, tune_backends

__version__ = '0.1.0'
__all__ = ['SGConv2d', 'SGConvNeXt', 'SGKernel1d', 'add_kernel_geometry', 'convert_convnext', 'tune_backends',
           'save_backend_table', 'load_backend_table', 'format_backend_table']
