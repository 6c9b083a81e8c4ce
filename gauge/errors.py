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


class DataError(GaugeError, ValueError):
    """Data is in none of the accepted forms (:mod:`gauge.batches`) or does not fit the model."""


def check_same_keys(a, b, names: tuple[str, str] = ("A", "B"), what: str = "params") -> None:
    """Raise :class:`MismatchError` unless the dicts ``a`` and ``b`` (params, masks) hold the
    same keys with tensors of the same shapes, naming the first key or shape that differs."""
    def differ(detail: str) -> MismatchError:
        return MismatchError(f"{what} {names[0]} and {names[1]} come from different "
                             f"architectures (different models?): {detail}")
    for k, t in a.items():
        if k not in b:
            raise differ(f"{k!r} is only in {names[0]}")
        if tuple(t.shape) != tuple(b[k].shape):
            raise differ(f"{k!r} has shape {tuple(t.shape)} in {names[0]} but "
                         f"{tuple(b[k].shape)} in {names[1]}")
    for k in b:
        if k not in a:
            raise differ(f"{k!r} is only in {names[1]}")


def one_line(exc: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message``, at most ``limit`` characters (for an error that
    quotes another one, e.g. what a model said about data it rejected)."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if isinstance(exc, SyntaxError) and exc.lineno:
        first = f"{exc.msg} (line {exc.lineno})"
    return f"{type(exc).__name__}: {first}"[:limit]
