"""Exceptions raised by :mod:`tickets`: one base class, one subclass per kind of bad input."""


class TicketsError(Exception):
    """Base class of all errors raised by :mod:`tickets` on bad input."""


class DataError(TicketsError):
    """A dataset name is unknown or its files are missing or malformed."""


class ModelError(TicketsError):
    """A model name or its keyword arguments are invalid, or params do not fit a model."""


class CheckpointError(TicketsError):
    """A checkpoint file is missing, corrupt, unsafe, non-finite or does not fit the model."""


class ConfigError(TicketsError):
    """A training or pruning configuration is invalid."""


class RunError(TicketsError):
    """A run directory is inconsistent (different hparams, missing levels, not a directory)."""
