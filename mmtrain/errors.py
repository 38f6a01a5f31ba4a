"""The one exception type for bad user input (configs, files, checkpoints).

The CLI prints its message on one line and exits non-zero without a traceback; anything else is
a programming error and keeps its traceback.
"""


class MMTrainError(ValueError):
    """A problem with what the user gave us: a config key, a file, a sample or a checkpoint."""
