"""Training real networks with the method: what sits around the paper's modules, not the reading path.

* :mod:`proxnp.training.models` -- the paper's MLP and ConvNet as model builders.
* :mod:`proxnp.training.data` -- the embedded digits, generated spirals, MNIST-1D, and loaders for
  your CIFAR-10, MNIST and Fashion-MNIST files.
* :mod:`proxnp.training.fit` -- the fit loop: batches, directions, optimizer, metrics, checkpoints.
* :mod:`proxnp.training.plots` -- the figures of a run.
* :mod:`proxnp.training.checkpoint`, :mod:`proxnp.training.files` -- validated checkpoints, atomic
  writes, a bounded .npz reader, a model's parameters in a file.
* :mod:`proxnp.training.memory` -- memory checks before anything large is allocated.
* :mod:`proxnp.training.errors` -- :class:`ProxnpError` and its kinds: the errors a user can cause
  (the command line prints them as one line; anything else is a bug and keeps its traceback).
"""

from .data import Dataset, load_dataset
from .errors import DataError, ProxnpError
from .files import load_model, save_model
from .fit import evaluate, fit, training_verdict
from .models import PAPER_MLP, convnet, mlp

__all__ = [
    "PAPER_MLP",
    "DataError",
    "ProxnpError",
    "Dataset",
    "convnet",
    "evaluate",
    "fit",
    "load_dataset",
    "load_model",
    "mlp",
    "save_model",
    "training_verdict",
]
