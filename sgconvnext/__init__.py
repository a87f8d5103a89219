"""SGConvNeXt: ConvNeXt with a global multi-scale SGConv token mixer, as a timm model family.

Importing this package registers ``sgconvnext_{atto,femto,pico,nano,tiny,small,base,large}`` with timm.
"""
from .convert import convert_convnext
from .kernel import SGKernel1d
from .model import SGConvNeXt, add_kernel_geometry
from .sgconv import SGConv2d

__version__ = '0.1.0'
__all__ = ['SGConv2d', 'SGConvNeXt', 'SGKernel1d', 'add_kernel_geometry', 'convert_convnext']
