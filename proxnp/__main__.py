"""``python -m proxnp``: see :mod:`proxnp.cli`."""

import sys

from .cli import main

sys.exit(main())
