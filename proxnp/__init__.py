"""proxnp: Proximal Backpropagation (Frerix et al., ICLR 2018) in NumPy and CuPy.

The package is laid out by audience.  The paper's modules sit at the top, flat; read them in
this order to meet every equation of the paper once:

    functional -> layers -> model -> losses -> penalty -> cg -> prox -> proxprop -> optim

beside ``gradcheck`` (finite-difference checks), ``backend`` (NumPy or CuPy, from the arrays)
and ``lessons`` (the notebooks' sizes).  Everything else lives apart, under names that say it
is not the reading path:

* :mod:`proxnp.fast` -- the same numbers, fast: threaded convolution and pooling, the
  range-space CG, CPU threads.  Inside ``with proxnp.reference():`` the plain code runs instead;
  inside ``with proxnp.threads(n):`` every operation runs on ``n`` threads (by default each
  gets as many as pay for themselves on the machine as it is).
* :mod:`proxnp.training` -- model builders, data, the fit loop, plots, checkpoints and files.
* :mod:`proxnp.cli` -- the command line, its options, run folders and the paper's experiments.
* :mod:`proxnp.assignments` -- tooling for the nbgrader course.
"""

from . import functional, gradcheck, optim
from .backend import get_xp, gpu_available, to_device, to_numpy
from .fast import reference
from .fast.cpu import threads
from .layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sigmoid, Tanh
from .losses import MeanSquaredError, SoftmaxCrossEntropy
from .model import Sequential
from .proxprop import backprop, proxprop
from .training.files import load_model, save_model

__version__ = "0.1.0"

__all__ = [
    "Conv2d",
    "Flatten",
    "Linear",
    "MaxPool2d",
    "MeanSquaredError",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "SoftmaxCrossEntropy",
    "Tanh",
    "backprop",
    "functional",
    "get_xp",
    "gpu_available",
    "gradcheck",
    "load_model",
    "optim",
    "proxprop",
    "reference",
    "save_model",
    "threads",
    "to_device",
    "to_numpy",
]
