"""Exceptions raised by :mod:`gauge`.

Every error the library raises on bad input is a :class:`GaugeError`, so callers (and the CLI)
can tell a user mistake from a bug.
"""


class GaugeError(Exception):
    """Base class of all errors raised by :mod:`gauge` on bad input."""


class SpecError(GaugeError):
    """A permutation spec does not fit the params or the model it is used with."""


class TraceError(SpecError):
    """The model's graph could not be traced or contains an op spec inference cannot explain."""


class MismatchError(GaugeError):
    """Two parameter dicts (or masks) do not describe the same architecture."""
