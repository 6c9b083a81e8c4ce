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


class FlatnessError(GaugeError):
    """A flatness measure (Hessian, sharpness, landscape) cannot be computed as asked."""


class NonFiniteLossError(FlatnessError):
    """The loss (or its gradient) at the checkpoint is NaN/inf: curvature is undefined there."""


class EmptyParamsError(FlatnessError):
    """The mask and/or param_filter leave no parameter to measure flatness in."""


class FlatnessOptionError(FlatnessError, ValueError):
    """An option is out of range (k larger than the parameter count, rho <= 0, ...)."""


class ConnectError(GaugeError, ValueError):
    """A linear path cannot be measured as asked (alpha grid, split, BN mode, missing data)."""
