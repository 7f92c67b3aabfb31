"""Test double of CuPy backed by NumPy (see ../README.md); not CuPy, never install it.

``ndarray`` wraps a NumPy array without being one, so, as with CuPy, ``numpy.asarray`` of it
raises instead of silently copying to the host, and NumPy arrays cannot be mixed in.
"""

import builtins as _builtins
import types as _types

import numpy as _np

__version__ = "0+numpy-double"


def _is_host_array(v):
    return isinstance(v, _np.ndarray) and v.ndim > 0


def _refuse_host(args, where):
    for v in args:
        if isinstance(v, (tuple, list)):
            _refuse_host(v, where)
        elif _is_host_array(v):
            raise TypeError(
                f"cupy double: a NumPy array was passed to {where}; move it to the device first"
            )


def _unwrap(x):
    """Device arrays -> their NumPy storage (recursively through tuples, lists, dicts)."""
    if isinstance(x, ndarray):
        return x._a
    if type(x) in (tuple, list):  # named tuples pass through
        return type(x)(_unwrap(i) for i in x)
    if isinstance(x, dict):
        return {k: _unwrap(v) for k, v in x.items()}
    return x


def _wrap(x):
    """NumPy arrays and scalars -> device arrays (CuPy returns 0-d arrays, not scalars)."""
    if isinstance(x, _np.ndarray):
        return ndarray(x)
    if isinstance(x, _np.generic):
        return ndarray(_np.asarray(x))
    if isinstance(x, (tuple, list)):  # CuPy returns plain tuples
        return (list if isinstance(x, list) else tuple)(_wrap(i) for i in x)
    return x


class ndarray:
    """A device array: NumPy's arithmetic, no implicit trip to the host."""

    __slots__ = ("_a",)

    def __init__(self, a):
        self._a = a

    def get(self):
        return self._a.copy()

    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed. "
            "Please use `.get()` to construct a NumPy array explicitly."
        )

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        _refuse_host(inputs + tuple(kwargs.get("out", ())), f"cupy.{ufunc.__name__}")
        return _wrap(getattr(ufunc, method)(*_unwrap(inputs), **_unwrap(kwargs)))

    def __array_function__(self, func, types, args, kwargs):
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    def __getattr__(self, name):  # shape, dtype, sum, reshape, ...
        if name.startswith("__"):  # no __array_interface__ & co.: not a host array
            raise AttributeError(name)
        attr = getattr(self._a, name)
        if callable(attr):
            return lambda *args, **kwargs: _wrap(attr(*_unwrap(args), **_unwrap(kwargs)))
        return _wrap(attr)

    @property
    def T(self):
        return ndarray(self._a.T)

    def __getitem__(self, key):
        return _wrap(self._a[_unwrap(key)])

    def __setitem__(self, key, value):
        self._a[_unwrap(key)] = _unwrap(value)

    def __len__(self):
        return _builtins.len(self._a)

    def __iter__(self):
        return (ndarray(row) for row in self._a)

    def __float__(self):
        return _builtins.float(self._a)

    def __int__(self):
        return _builtins.int(self._a)

    def __bool__(self):
        return _builtins.bool(self._a)

    def __index__(self):
        return self._a.__index__()

    def __repr__(self):
        return f"array({self._a!r}, device=double)"

    __hash__ = None


def _binary(name):
    def op(self, *other):
        _refuse_host(other, f"ndarray.{name}")
        return _wrap(getattr(self._a, name)(*_unwrap(other)))

    return op


def _inplace(name):
    def op(self, other):
        _refuse_host([other], f"ndarray.{name}")
        getattr(self._a, name)(_unwrap(other))
        return self

    return op


for _op in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor"):
    setattr(ndarray, f"__{_op}__", _binary(f"__{_op}__"))
    setattr(ndarray, f"__r{_op}__", _binary(f"__r{_op}__"))
    setattr(ndarray, f"__i{_op}__", _inplace(f"__i{_op}__"))
for _op in ("lt", "le", "gt", "ge", "eq", "ne", "neg", "pos", "abs", "invert"):
    setattr(ndarray, f"__{_op}__", _binary(f"__{_op}__"))


def _device_function(f, name, accepts_host=False):
    def call(*args, **kwargs):
        if not accepts_host:
            _refuse_host(list(args) + list(kwargs.values()), f"cupy.{name}")
        return _wrap(f(*_unwrap(args), **_unwrap(kwargs)))

    call.__name__ = name
    return call


for _name in dir(_np):
    if _name.startswith("_") or _name in ("ndarray", "linalg", "random", "lib", "testing"):
        continue
    _obj = getattr(_np, _name)
    if callable(_obj) and not isinstance(_obj, type):
        globals()[_name] = _device_function(_obj, _name, accepts_host=_name in ("asarray", "array"))
    else:
        globals()[_name] = _obj  # dtypes, scalar types, constants (np.bool shadows bool here)

linalg = _types.SimpleNamespace(
    **{
        name: _device_function(getattr(_np.linalg, name), name)
        for name in ("cholesky", "eigh", "norm", "solve", "qr")
    }
)
cuda = _types.SimpleNamespace(
    runtime=_types.SimpleNamespace(
        getDeviceCount=lambda: 1, runtimeGetVersion=lambda: 0, driverGetVersion=lambda: 0
    ),
    Stream=_types.SimpleNamespace(null=_types.SimpleNamespace(synchronize=lambda: None)),
)
