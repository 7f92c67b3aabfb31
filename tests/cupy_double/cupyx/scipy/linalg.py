"""Test double of cupyx.scipy.linalg: the one function proxnp calls, with CuPy 14.2's signature."""

import cupy as _cp
import scipy.linalg as _sl


def solve_triangular(
    a, b, trans=0, lower=False, unit_diagonal=False, overwrite_b=False, check_finite=False
):
    _cp._refuse_host([a, b], "cupyx.scipy.linalg.solve_triangular")
    return _cp._wrap(
        _sl.solve_triangular(
            _cp._unwrap(a), _cp._unwrap(b), trans=trans, lower=lower, unit_diagonal=unit_diagonal
        )
    )
