"""The helpers the benchmark scripts beside this folder import (not run on their own): interleaved timing, the
machine's description and report sections (``utils``), and for tools/benchmark.py: the FLOPs and SGConv2d's
backend per stage (``measure``), peak memory of a step (``memory``), the markdown report (``report``) and the
resolution-sweep plot (``plot``).

Importing the package puts the checkout on the path, so the scripts (and these modules) import sgconvnext
without installing it.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
