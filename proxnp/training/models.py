"""The paper's architectures as model builders, and what training one needs in memory.

Architectures (arXiv 1706.04638, Section 5):

* :func:`mlp` -- fully connected ReLU network, e.g. the paper's 3072-4000-1000-4000-10.
* :func:`convnet` -- three Conv(5x5, padding 2) -> ReLU -> MaxPool(2) blocks and a final
  Linear.  The paper draws a third pooling layer (FC 320 -> 10 on CIFAR-10); the
  authors' code has none (FC 1280 -> 10).  ``third_pool=False`` (the default)
  follows the code, which produced the paper's numbers; ``True`` follows the text.
"""

import numpy as np

from ..layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sigmoid, Tanh
from ..model import Sequential

ACTIVATIONS = {"relu": ReLU, "tanh": Tanh, "sigmoid": Sigmoid}
PAPER_MLP = (3072, 4000, 1000, 4000, 10)


def mlp(sizes, act="relu", rng=None, dtype=np.float32):
    """Linear -> act -> ... -> Linear with the given layer sizes (first = input size)."""
    if len(sizes) < 2:
        raise ValueError(f"an MLP needs at least an input and an output size, got {sizes}")
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; allowed: {', '.join(ACTIVATIONS)}")
    rng = np.random.default_rng(0) if rng is None else rng
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(Linear(n_in, n_out, rng=rng, dtype=dtype))
        if i < len(sizes) - 2:
            layers.append(ACTIVATIONS[act]())
    return Sequential(*layers)


def convnet(
    in_shape=(3, 32, 32),
    n_classes=10,
    channels=(16, 20, 20),
    third_pool=False,
    rng=None,
    dtype=np.float32,
):
    """The paper's ConvNet (§5.3): [Conv5x5(p=2) -> ReLU -> Pool2] x 3 -> FC.

    in_shape (C, H, W).  With ``third_pool=False`` (authors' code) the last block
    has no pooling.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    c, h, w = in_shape
    layers = []
    for i, out_c in enumerate(channels):
        layers += [Conv2d(c, out_c, 5, padding=2, rng=rng, dtype=dtype), ReLU()]
        if i < len(channels) - 1 or third_pool:
            if min(h, w) < 2:
                raise ValueError(
                    f"input {in_shape} is too small for {len(channels)} pooling layers"
                )
            layers.append(MaxPool2d(2))
            h, w = h // 2, w // 2
        c = out_c
    layers += [Flatten(), Linear(c * h * w, n_classes, rng=rng, dtype=dtype)]
    return Sequential(*layers)


def mlp_sizes(config, input_shape, n_classes):
    """The MLP's layer sizes as built: the config's hidden sizes (default 256 256)
    between the data's input size and its number of classes."""
    sizes = list(config.get("sizes") or (0, 256, 256, 0))
    sizes[0], sizes[-1] = int(np.prod(input_shape)), n_classes
    return sizes


def memory_estimate(config, input_shape, n_classes, batch_size, dtype):
    """(bytes, parameters): about what training the experiment's model needs.

    Parameters, gradients, two optimizer buffers and a scratch copy (5 P), plus
    the activations of a batch (at least an evaluation batch of 1000) twice over
    (forward values and backward errors), plus each ProxProp layer's Gram matrix.
    A lower bound in spirit: it exists to refuse sizes that cannot fit.
    """
    itemsize = np.dtype(dtype).itemsize
    rows = max(batch_size, 1000)
    if config["model"] == "mlp":
        sizes = mlp_sizes(config, input_shape, n_classes)
        params = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))
        acts = 2 * sum(sizes)
        gram = sum(min(batch_size, a + 1) ** 2 for a in sizes[:-1])
    else:
        c, h, w = input_shape
        params, acts, gram = 0, c * h * w, 0
        for i, out_c in enumerate((16, 20, 20)):  # as convnet(), third_pool=False
            params += out_c * (c * 25 + 1)
            acts += (3 * out_c + c * 25) * h * w  # conv, relu, pool; im2col patches
            gram += min(batch_size * h * w, c * 25 + 1) ** 2
            c = out_c
            if i < 2:
                h, w = h // 2, w // 2
        params += (c * h * w + 1) * n_classes
    return itemsize * (5 * params + 2 * rows * acts + gram), params


def build_model(config, input_shape, n_classes, seed, dtype):
    """The experiment's model, initialised from ``seed`` (the same for every run)."""
    rng = np.random.default_rng([seed, 0])
    if config["model"] == "mlp":
        return mlp(mlp_sizes(config, input_shape, n_classes), rng=rng, dtype=dtype)
    if len(input_shape) != 3:
        raise ValueError(f"the convnet needs image input (C, H, W), got shape {input_shape}")
    return convnet(input_shape, n_classes, rng=rng, dtype=dtype)
