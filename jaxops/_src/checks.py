"""The checks and error messages every jaxops operator shares.

Every message reads ``"<op>: expected <invariant>, got <actual>."`` and is built
here, never inline. Three kinds of check:

* type and dtype checks raise ``TypeError`` at call/trace time;
* rank, shape and static-argument checks raise ``ValueError`` at call/trace time;
* value checks (:func:`check_values`) raise ``ValueError`` at once when the
  arrays they read are concrete, and become
  ``jax.experimental.checkify.debug_check`` s carrying the same message when
  they are traced, so ``checkify`` (or :func:`jaxops.checked`) reports them
  under ``jit`` and ``vmap`` and they cost nothing otherwise.

Whether an argument is concrete is judged per array, on the argument as the
caller passed it: a NumPy array or a ``jax.Array`` closed over inside ``jit``
is concrete; a ``jit``/``vmap``/``grad`` tracer is not.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import checkify

_CHECKIFY_SUFFIX = " (`check` failed)"
_NAN = float("nan")


def message(op: str, expected: str, got: str, hint: str = "") -> str:
    """Builds the one error message format: ``"<op>: expected ..., got .... <hint>"``."""
    text = f"{op}: expected {expected}, got {got}."
    return f"{text} {hint}" if hint else text


def type_error(op: str, expected: str, got: str, hint: str = "") -> TypeError:
    return TypeError(message(op, expected, got, hint))


def value_error(op: str, expected: str, got: str, hint: str = "") -> ValueError:
    return ValueError(message(op, expected, got, hint))


# --------------------------------------------------------------------------- #
# Concrete versus traced
# --------------------------------------------------------------------------- #


def is_traced(x: Any) -> bool:
    """True when ``x`` is a tracer (under ``jit``, ``vmap``, ``grad``, ``checkify``...)."""
    return isinstance(x, jax.core.Tracer)


def concrete_values(*arrays: Any) -> tuple[np.ndarray, ...] | None:
    """NumPy copies of ``arrays`` when none is traced, else ``None``.

    Call it on the arguments as the caller passed them, before ``jnp.asarray``:
    inside ``jit``, ``jnp.asarray`` of a constant is itself a tracer.
    """
    if any(is_traced(a) for a in arrays):
        return None
    return tuple(np.asarray(a) for a in arrays)


def check_values(op: str, ok: Any, expected: str, got: str, *fmt_args: Any) -> None:
    """A value check: raise now when ``ok`` is concrete, else a checkify ``debug_check``.

    Args:
      op: the operator name that starts the message.
      ok: a boolean scalar, NumPy (concrete) or JAX (traced).
      expected: the invariant, e.g. ``"lengths >= 0"``. Braces are literal.
      got: what was found, with ``{}`` placeholders filled from ``fmt_args``.
      *fmt_args: scalars, NumPy or JAX, for the placeholders.
    """
    template = message(op, expected.replace("{", "{{").replace("}", "}}"), got)
    if is_traced(ok) or any(is_traced(a) for a in fmt_args):
        checkify.debug_check(jnp.asarray(ok), template, *fmt_args)
    elif not bool(ok):
        raise ValueError(template.format(*(np.asarray(a).item() for a in fmt_args)))


def checked(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Runs ``fn`` under ``checkify`` and raises the first failed value check.

    jaxops' value checks raise ``ValueError`` eagerly, but under ``jit`` or
    ``vmap`` they are ``checkify.debug_check`` s that cost nothing unless the
    function is checkified. ``checked(fn)`` does that for you: it returns a
    function with ``fn``'s signature that raises ``ValueError`` with the failed
    check's message, or returns ``fn``'s output. Wrap the jitted function
    (``checked(jax.jit(f))``), and call the result outside ``jit``.

    Args:
      fn: any JAX-traceable function.

    Returns:
      A function that returns ``fn(*args, **kwargs)`` or raises ``ValueError``.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxops
      >>> f = jax.jit(lambda v, l: jaxops.pack_rnn_sequence(v, l, max_length=4))
      >>> jaxops.checked(f)(jnp.arange(3.0), jnp.array([2, -1]))
      Traceback (most recent call last):
      ...
      ValueError: pack_rnn_sequence: expected lengths >= 0, got lengths[1] = -1.
    """
    checkified = checkify.checkify(fn, errors=checkify.user_checks)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        err, out = checkified(*args, **kwargs)
        msg = err.get()
        if msg is not None:
            raise ValueError(msg.split(_CHECKIFY_SUFFIX)[0])
        return out

    return wrapper


# --------------------------------------------------------------------------- #
# Types, ranks, shapes
# --------------------------------------------------------------------------- #

_KINDS: dict[str, tuple[str, Callable[[np.dtype], bool]]] = {
    "floating": ("a floating dtype", lambda d: jnp.issubdtype(d, jnp.floating)),
    "integer": ("an integer dtype", lambda d: jnp.issubdtype(d, jnp.integer)),
    "bool": ("dtype bool", lambda d: d == np.bool_),
    "real": (
        "a real (integer or floating) dtype",
        lambda d: jnp.issubdtype(d, jnp.floating) or jnp.issubdtype(d, jnp.integer),
    ),
    "data": (
        "a numeric or bool dtype",
        lambda d: (
            d == np.bool_ or jnp.issubdtype(d, jnp.floating) or jnp.issubdtype(d, jnp.integer)
        ),
    ),
}


def as_array(op: str, name: str, x: Any, kind: str) -> jax.Array:
    """``jnp.asarray(x)`` after checking that its dtype is of ``kind`` (else ``TypeError``).

    ``kind`` is one of ``"floating"``, ``"integer"``, ``"bool"``, ``"real"``, ``"data"``.
    """
    try:
        dtype = jnp.result_type(x) if hasattr(x, "dtype") else np.asarray(x).dtype
    except (TypeError, ValueError) as e:
        raise type_error(op, f"`{name}` to be an array", f"{type(x).__name__}") from e
    description, accepts = _KINDS[kind]
    if dtype == np.dtype(object) or not accepts(np.dtype(dtype)):
        raise type_error(op, f"`{name}` of {description}", f"dtype {np.dtype(dtype).name}")
    return jnp.asarray(x)


def check_ndim(op: str, name: str, x: jax.Array, ndim: int | None = None, *, min_ndim=None):
    """``ValueError`` unless ``x.ndim == ndim`` (or ``>= min_ndim``)."""
    if ndim is not None and x.ndim != ndim:
        raise value_error(op, f"`{name}` of rank {ndim}", f"shape {tuple(x.shape)}")
    if min_ndim is not None and x.ndim < min_ndim:
        raise value_error(op, f"`{name}` of rank >= {min_ndim}", f"shape {tuple(x.shape)}")


def check_equal(op: str, what: str, a: Any, b: Any) -> None:
    """``ValueError`` unless the two static values (sizes, dtypes...) agree."""
    if a != b:
        raise value_error(op, f"{what} to match", f"{a} and {b}")


def static_int(op: str, name: str, value: Any, *, minimum: int | None = None) -> int:
    """A Python ``int`` from a static argument (NumPy integers accepted, bools not)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise type_error(op, f"`{name}` to be a Python int", f"{name}={value!r}")
    value = operator.index(value)
    if minimum is not None and value < minimum:
        raise value_error(op, f"{name} >= {minimum}", f"{name}={value}")
    return value


def static_bool(op: str, name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise type_error(op, f"`{name}` to be a Python bool", f"{name}={value!r}")
    return bool(value)


def static_scalar(op: str, name: str, value: Any, dtype: Any) -> bool | int | float:
    """A hashable Python scalar that converts to ``dtype`` (pad and fill values)."""
    if is_traced(value) or np.ndim(value) != 0:
        raise type_error(op, f"`{name}` to be a static Python scalar", f"{name}={value!r}")
    value = np.asarray(value).item()
    if isinstance(value, float) and value != value:
        value = _NAN  # one NaN object, so that jit's static-argument cache hits
    if not isinstance(value, (bool, int, float)):
        raise type_error(op, f"`{name}` to be a Python scalar", f"{name}={value!r}")
    if (
        isinstance(value, float)
        and not jnp.issubdtype(dtype, jnp.floating)
        and not value.is_integer()
    ):
        raise value_error(op, f"`{name}` representable in {np.dtype(dtype).name}", repr(value))
    return value


def full_like_dtype(value: bool | int | float, dtype: Any) -> jax.Array:
    """The scalar ``value`` as a 0-d array of ``dtype`` (no promotion involved)."""
    return jnp.asarray(np.asarray(value).astype(dtype))


def static_size(op: str, keyword: str, value: Any, sources: str, traced: bool, default):
    """The static output size: ``value`` if given, else ``default()`` when concrete.

    Raises ``ValueError`` naming ``keyword`` when ``value`` is ``None`` and the
    arrays it would be computed from (``sources``) are traced.
    """
    if value is not None:
        return static_int(op, keyword, value, minimum=0)
    if traced:
        raise value_error(
            op,
            f"a static `{keyword}=` when `{sources}` is traced (under jit or vmap)",
            f"{keyword}=None",
            f"Pass {keyword}=<int>: the output size cannot depend on traced values.",
        )
    return int(default())


# --------------------------------------------------------------------------- #
# Lengths: the segment description most operators share
# --------------------------------------------------------------------------- #


def as_lengths(op: str, lengths: Any, name: str = "lengths") -> jax.Array:
    """``lengths`` as a rank-1 integer array (``TypeError``/``ValueError`` otherwise)."""
    out = as_array(op, name, lengths, "integer")
    check_ndim(op, name, out, 1)
    return out


def check_lengths(
    op: str,
    lengths: Any,
    *,
    total: int | None = None,
    total_name: str = "",
    max_length: int | None = None,
    max_name: str = "max_length",
    name: str = "lengths",
) -> None:
    """The value checks on segment lengths that several operators share.

    ``lengths >= 0``; ``sum(lengths) <= total`` (when given); ``max(lengths) <=
    max_length`` (when given). ``lengths`` is the argument as passed (concrete
    checks run in NumPy, traced ones in JAX).
    """
    values = concrete_values(lengths)
    xp, lv = (np, values[0]) if values is not None else (jnp, jnp.asarray(lengths))
    if lv.shape[0] == 0:
        return
    lv = lv.astype(xp.int64) if xp is np else lv
    first_negative = xp.argmin(lv)
    check_values(
        op,
        lv[first_negative] >= 0,
        f"{name} >= 0",
        f"{name}[{{}}] = {{}}",
        first_negative,
        lv[first_negative],
    )
    clipped = xp.maximum(lv, 0)
    if total is not None:
        total_sum = xp.sum(clipped)
        check_values(
            op,
            total_sum <= total,
            f"sum({name}) <= {total_name} = {total}",
            f"sum({name}) = {{}}",
            total_sum,
        )
    if max_length is not None:
        longest = xp.argmax(lv)
        check_values(
            op,
            lv[longest] <= max_length,
            f"{name} <= {max_name} = {max_length}",
            f"{name}[{{}}] = {{}}",
            longest,
            lv[longest],
        )


def cumsum(x: jax.Array, axis: int = 0) -> jax.Array:
    """Inclusive cumulative sum along ``axis`` as int32 (bool or integer ``x``).

    A parallel prefix sum (``lax.associative_scan``): exact in integers, and on
    XLA CPU 1.5-3.5x faster than ``jnp.cumsum`` (whose CPU lowering is a
    reduce-window) at every length measured, 256 to 8M.
    """
    return lax.associative_scan(jnp.add, x.astype(jnp.int32), axis=axis)


def exclusive_cumsum(lengths: jax.Array) -> jax.Array:
    """``off[n] = lengths[0] + ... + lengths[n-1]`` as int32 (``off[0] = 0``)."""
    lengths = lengths.astype(jnp.int32)
    return cumsum(lengths) - lengths


def count_at_most(sorted_values: jax.Array, size: int) -> jax.Array:
    """``searchsorted(sorted_values, arange(size), side="right")`` as int32.

    Entry ``r`` counts the values ``<= r``. ``sorted_values`` must be
    non-negative integers in ascending order (offsets, cumulative counts).
    Computed as a cumsum of a histogram: O(len + size) work, no binary search
    (on XLA CPU 2-5x faster than ``jnp.searchsorted``'s default method).
    """
    histogram = jnp.bincount(sorted_values, length=size)  # values >= size are dropped
    return cumsum(histogram)


def segments(
    lengths: jax.Array, rows: int, max_length: int | None = None
) -> tuple[jax.Array, jax.Array]:
    """Offsets and in-bounds lengths (int32) of the segments ``lengths`` describes.

    Offsets use ``clip(lengths, 0, rows)``; each segment is then truncated to
    ``max_length`` (when given) and to the ``rows`` available, so that
    ``off[n] + t`` for ``t < effective[n]`` always lies in ``[0, rows)``: the
    safe result of invalid lengths under tracing. For valid lengths,
    ``effective == lengths``.
    """
    clipped = jnp.clip(lengths, 0, rows).astype(jnp.int32)
    offsets = exclusive_cumsum(clipped)
    effective = jnp.minimum(clipped, jnp.maximum(rows - offsets, 0))
    if max_length is not None:
        effective = jnp.minimum(effective, max_length)
    return offsets, effective


def broadcast_rows(mask: jax.Array, ndim: int) -> jax.Array:
    """Reshape a mask over leading axes so it lines up with an array of rank ``ndim``.

    Explicit, so that ``jax_numpy_rank_promotion="raise"`` is satisfied.
    """
    return mask.reshape(mask.shape + (1,) * (ndim - mask.ndim))
