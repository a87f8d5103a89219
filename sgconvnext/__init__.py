"""SGConvNeXt: ConvNeXt with a global multi-scale SGConv token mixer, as a timm model family."""
from .kernel import SGKernel1d
from .sgconv import SGConv2d

__version__ = '0.1.0'
__all__ = ['SGConv2d', 'SGKernel1d']
