"""``python -m proxnp.assignments``: see :mod:`proxnp.assignments.course`."""

import sys

from .course import main

sys.exit(main())
