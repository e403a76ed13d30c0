"""User-facing errors. The CLI prints their message without a traceback."""


class NagError(Exception):
    """Base class of every error whose message is meant for the user."""


class DataNotFoundError(NagError):
    """A data set could not be found or read."""


class SpaceError(NagError):
    """A search-space config is malformed."""


class ArchitectureError(NagError):
    """An architecture does not belong to its search space; the message names the bad field."""


class CheckpointError(NagError):
    """A checkpoint or artifact is missing, corrupt or does not match what is expected."""
