"""Sequential: a stack of layers that records the activations of the paper.

``forward`` stores every layer's input and output, so after ``model.forward(x)``
``model.acts[i]`` is the input of layer i and ``model.acts[i + 1]`` its output.
For a parametrised layer phi_l at index i these are a_{l-1} and z_l (Fig. 1).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .backend import Array, device_of, to_device, to_numpy
from .layers import FLOAT_DTYPES, Layer, is_parametrised


class Sequential:
    """Layers applied in order: y = layer_n(... layer_1(x)).

    * ``layers`` -- the layers, bottom to top.
    * ``acts`` -- ``[x, out_1, ..., out_n]`` from the last :meth:`forward` (empty before one).
    * ``cg_info`` -- what the last :func:`proxnp.proxprop` call recorded for each layer that
      took the proximal step (11): ``{layer index: CGInfo or None}``, the CG record
      (:class:`proxnp.cg.CGInfo`: iterations run, residual norms per column) when proxnp's
      CG ran, None for the exact and gradient solvers and for ``cg_backend="scipy"``.
      Empty until proxprop runs.
    """

    def __init__(self, *layers: Layer) -> None:
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        self.layers = list(layers)
        self.acts = []
        self.cg_info = {}
        # The first layer's input gradient is never used: skip computing it.
        for layer in self.layers:
            if hasattr(layer, "need_input_grad"):
                layer.need_input_grad = layer is not self.layers[0]

    def forward(self, x: Array) -> Array:
        """Run the layers, recording acts = [x, out_1, ..., out_n]; return out_n."""
        if getattr(x, "dtype", None) not in FLOAT_DTYPES:
            raise ValueError(
                f"model input must be a float32 or float64 array, got "
                f"{getattr(x, 'dtype', type(x).__name__)}; convert it first, "
                "e.g. x.astype(np.float32)"
            )
        self.acts = [x]
        for layer in self.layers:
            x = layer.forward(x)
            self.acts.append(x)
        return x

    __call__ = forward

    def backward(self, dy: Array) -> Array | None:
        """Backpropagate dy through every layer (each assigns its grads); return dx or None."""
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def parametrised(self) -> list[int]:
        """Indices of the parametrised layers (Linear, Conv2d), bottom to top."""
        return [i for i, layer in enumerate(self.layers) if is_parametrised(layer)]

    @property
    def device(self) -> str:
        """'cpu' or 'gpu': where the parameters live."""
        for layer in self.layers:
            for v in layer.params.values():
                return device_of(v)
        return "cpu"

    @property
    def dtype(self) -> np.dtype | None:
        for layer in self.layers:
            for v in layer.params.values():
                return v.dtype
        return None

    def to(self, device: str) -> Sequential:
        """Move every layer's parameters to 'cpu' or 'gpu'; returns self."""
        for layer in self.layers:
            layer.to(device)
        self.acts = []
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        """{'<index>.<name>': numpy array} for every parameter (copied to the host)."""
        return {
            f"{i}.{k}": to_numpy(v)
            for i, layer in enumerate(self.layers)
            for k, v in layer.params.items()
        }

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Copy arrays into the parameters; keys, shapes and dtypes must match exactly."""
        own = {f"{i}.{k}": (layer, k) for i, layer in enumerate(self.layers) for k in layer.params}
        missing, unexpected = set(own) - set(state), set(state) - set(own)
        if missing or unexpected:
            raise ValueError(
                f"state does not fit this model: missing {sorted(missing)}, "
                f"unexpected {sorted(unexpected)}"
            )
        for key, (layer, k) in own.items():
            old, new = layer.params[k], state[key]
            if new.shape != old.shape or new.dtype != old.dtype:
                raise ValueError(
                    f"parameter {key}: expected {old.dtype}{old.shape}, got {new.dtype}{new.shape}"
                )
        for key, (layer, k) in own.items():
            layer.params[k] = _like(layer.params[k], state[key])

    def __repr__(self):
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Sequential(\n  {inner}\n)"


def _like(old, new):
    """A copy of ``new`` (host array) placed where ``old`` lives."""
    return to_device(np.array(new, copy=True), device_of(old))
