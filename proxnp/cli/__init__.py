"""The command line, ``python -m proxnp {compare,train,reproduce,info}``: the application, not the method.

* :mod:`proxnp.cli.commands` -- the commands, their output files and their one-line errors.
* :mod:`proxnp.cli.options` -- the options, their ranges and the paper's defaults.
* :mod:`proxnp.cli.experiments` -- the paper's experiments by name (Section 5).
* :mod:`proxnp.cli.runs` -- one locked output folder per run.
"""

from .commands import build_cli_parser, main

__all__ = ["build_cli_parser", "main"]
