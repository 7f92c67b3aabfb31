"""The errors a user can cause: one base class, one level below it.

The command line prints a :class:`ProxnpError` as one line and exits with status 2; any
other exception is a bug in proxnp and keeps its traceback.  Every class derives from
:class:`ValueError`, so code that caught ``ValueError`` before keeps working.

    ProxnpError(ValueError)
      DataError        a data set or data file cannot be used (names the file)
      UserFileError    a file or folder the user named cannot be read or written as needed
      CheckpointError  a checkpoint cannot be resumed (names the file)
      MemoryLimitError an allocation would not fit (names what and how large)
      TrainingError    the run cannot go on with these settings (names the setting)
      OptionError      (proxnp.cli.options) a bad command-line option (names the flag)
      RunDirError      (proxnp.cli.runs) the output folder cannot be used (names it)
"""


class ProxnpError(ValueError):
    """A problem with what the user gave proxnp: printed as one line by the command line."""


class DataError(ProxnpError):
    """A data set could not be loaded; the message names the file and the problem."""


class UserFileError(ProxnpError):
    """A file the user named is not a regular file, too large, unreadable or unwritable."""


class CheckpointError(ProxnpError):
    """A checkpoint cannot be resumed; the message names the file and the problem."""


class MemoryLimitError(ProxnpError):
    """An allocation would not fit; the message names what and how large."""


class TrainingError(ProxnpError):
    """Training cannot continue with the settings given; the message names the setting."""
