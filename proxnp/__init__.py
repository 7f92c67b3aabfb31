"""proxnp: Proximal Backpropagation (Frerix et al., ICLR 2018) in NumPy and CuPy.

Read in this order to meet every equation of the paper once:
functional -> layers -> model -> penalty -> cg -> prox -> proxprop.
The fast kernels (fast_layers, fast_prox, cpu) compute the same numbers; inside
``with proxnp.reference():`` the plain reading path runs instead.
"""
from . import functional, gradcheck
from .backend import get_xp, gpu_available, to_device, to_numpy
from .config import reference
from .layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sigmoid, Tanh
from .losses import MeanSquaredError, SoftmaxCrossEntropy
from .model import Sequential

__version__ = "0.1.0"

__all__ = [
    "Conv2d", "Flatten", "Linear", "MaxPool2d", "MeanSquaredError", "ReLU", "Sequential",
    "Sigmoid", "SoftmaxCrossEntropy", "Tanh", "functional", "get_xp", "gpu_available",
    "gradcheck", "reference", "to_device", "to_numpy",
]

from . import optim  # noqa: E402
from .proxprop import backprop, proxprop  # noqa: E402

__all__ += ["backprop", "optim", "proxprop"]
