"""The loaders' error, in a module of its own so that naming it imports nothing heavy."""


class LoadError(ValueError):
    """Weights that do not fit the model: the message names the file, the tensor and the fix."""


class ChecksumError(LoadError):
    """A file whose bytes differ from the sha256 recorded when it was written (corrupted or edited)."""
