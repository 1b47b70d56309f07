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

import contextlib
import contextvars
import functools
import math
import operator
from collections.abc import Callable
from typing import Any, ParamSpec, SupportsInt, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import checkify

_CHECKIFY_SUFFIX = " (`check` failed)"
_NAN = float("nan")
# Every index jaxops computes is int32, so every array (and output) it handles
# must have at most this many elements: XLA would clamp a wrapped index silently.
INT32_MAX = 2**31 - 1

_P = ParamSpec("_P")
_R = TypeVar("_R")


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


# Whether value checks run: switched off inside `unchecked`. A JAX user context
# (part of jit's cache key, so a trace with checks is never reused without them,
# nor the reverse) where JAX has one; a context variable before that.
_make_user_context = getattr(jax, "make_user_context", None)
if _make_user_context is not None:
    _UNCHECKED = _make_user_context(False)

    def _checks_off() -> bool:
        return bool(_UNCHECKED.value)

    def _switched_off() -> contextlib.AbstractContextManager:
        return _UNCHECKED(True)

else:  # pragma: no cover - JAX before make_user_context
    _UNCHECKED_VAR = contextvars.ContextVar("jaxops_unchecked", default=False)

    def _checks_off() -> bool:
        return _UNCHECKED_VAR.get()

    @contextlib.contextmanager
    def _switched_off():
        token = _UNCHECKED_VAR.set(True)
        try:
            yield
        finally:
            _UNCHECKED_VAR.reset(token)


def checks_off() -> bool:
    """True while ``unchecked`` traces: skip work that only feeds value checks."""
    return _checks_off()


def check_values(op: str, ok: Any, expected: str, got: str, *fmt_args: Any) -> None:
    """A value check: raise now when ``ok`` is concrete, else a checkify ``debug_check``.

    Args:
      op: the operator name that starts the message.
      ok: a boolean scalar, NumPy (concrete) or JAX (traced).
      expected: the invariant, e.g. ``"lengths >= 0"``. Braces are literal.
      got: what was found, with ``{}`` placeholders filled from ``fmt_args``.
      *fmt_args: scalars, NumPy or JAX, for the placeholders.
    """
    if _checks_off():
        return
    template = message(op, expected.replace("{", "{{").replace("}", "}}"), got)
    if is_traced(ok) or any(is_traced(a) for a in fmt_args):
        checkify.debug_check(jnp.asarray(ok), template, *fmt_args)
    elif not bool(ok):
        raise ValueError(template.format(*(np.asarray(a).item() for a in fmt_args)))


def checked(fn: Callable[_P, _R]) -> Callable[_P, _R]:
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


def unchecked(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Runs (and traces) ``fn`` with every jaxops value check switched off.

    The dual of :func:`checked`. Value checks (negative lengths, sums past the
    rows, uncovered ``boolean_unmask`` positions, ...) raise eagerly and
    become ``checkify.debug_check`` effects under tracing. An effect sends
    every call of a jitted function down JAX's slower dispatch path (about
    15 us per call on CPU) and stops ``jax.export`` from serialising it.
    Inside ``unchecked(fn)`` there are none: invalid values give each op's
    documented safe result (clipped lengths, fill values; never an
    out-of-bounds read), eagerly too. Type, shape and static-argument errors
    still raise. The switch is scoped to the call and is part of ``jit``'s
    cache key, so ``jax.jit(f)`` and ``jaxops.unchecked(jax.jit(f))`` never
    share a trace.

    Args:
      fn: any function.

    Returns:
      A function with ``fn``'s signature.

    Examples:
      >>> import jax, jax.numpy as jnp, jaxops
      >>> f = jax.jit(jaxops.unchecked(lambda v, l: jaxops.pack_rnn_sequence(v, l, max_length=2)))
      >>> f(jnp.arange(3.0), jnp.array([2, -1]))  # no check: -1 is clipped to 0
      Array([[0., 0.],
             [1., 0.]], dtype=float32)
      >>> exported = jax.export.export(f)(jnp.arange(3.0), jnp.array([2, 1]))
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _switched_off():
            return fn(*args, **kwargs)

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
    out = to_device(x)
    if out.size > INT32_MAX:
        raise value_error(
            op, f"`{name}` of at most 2**31 - 1 elements", f"shape {tuple(out.shape)}"
        )
    return out


def to_device(x: Any) -> jax.Array:
    """``jnp.asarray(x)``, but a NumPy array moves with ``jax.device_put``.

    In JAX 0.10 ``jnp.asarray`` of a NumPy array compiles a small program per
    shape; ``device_put`` makes the same array (dtype canonicalised, traced
    inside ``jit``) without compiling, so eager calls with host arrays of
    changing shapes compile nothing but the operator.
    """
    return jax.device_put(x) if isinstance(x, np.ndarray) else jnp.asarray(x)


def check_ndim(
    op: str, name: str, x: jax.Array, ndim: int | None = None, *, min_ndim: int | None = None
) -> None:
    """``ValueError`` unless ``x.ndim == ndim`` (or ``>= min_ndim``)."""
    if ndim is not None and x.ndim != ndim:
        raise value_error(op, f"`{name}` of rank {ndim}", f"shape {tuple(x.shape)}")
    if min_ndim is not None and x.ndim < min_ndim:
        raise value_error(op, f"`{name}` of rank >= {min_ndim}", f"shape {tuple(x.shape)}")


def check_broadcastable(op: str, name: str, x: jax.Array, shape: tuple, target: str) -> None:
    """``ValueError`` unless ``x`` broadcasts to ``shape`` (the shape of ``target``) as is."""
    fits = x.ndim <= len(shape) and all(
        a in (1, b) for a, b in zip(x.shape[::-1], shape[::-1], strict=False)
    )
    if not fits:
        raise value_error(
            op,
            f"`{name}` broadcastable to the shape of `{target}`, {tuple(shape)}",
            f"shape {tuple(x.shape)}",
        )


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
    """A hashable Python scalar that ``dtype`` represents (pad and fill values).

    Integers must lie in the integer dtype's range, bool dtypes take only 0/1,
    and a finite value must stay finite in a floating dtype (floats round to
    the nearest representable value, as any cast does): never a wrapped value.
    """
    if is_traced(value) or np.ndim(value) != 0:
        raise type_error(op, f"`{name}` to be a static Python scalar", f"{name}={value!r}")
    value = np.asarray(value).item()
    if isinstance(value, float) and value != value:
        value = _NAN  # one NaN object, so that jit's static-argument cache hits
    if not isinstance(value, (bool, int, float)):
        raise type_error(op, f"`{name}` to be a Python scalar", f"{name}={value!r}")
    if not _representable(value, np.dtype(dtype)):
        raise value_error(
            op, f"`{name}` representable in {np.dtype(dtype).name}", f"{name}={value!r}"
        )
    return value


def _representable(value: bool | int | float, dtype: np.dtype) -> bool:
    if jnp.issubdtype(dtype, jnp.floating):
        if isinstance(value, float) and not math.isfinite(value):
            return True  # inf and NaN exist in every floating dtype
        try:
            with np.errstate(over="ignore"):
                return bool(np.isfinite(np.asarray(float(value)).astype(dtype)))
        except OverflowError:  # a Python int beyond float64
            return False
    if isinstance(value, float) and not value.is_integer():
        return False  # also NaN and inf
    if dtype == np.bool_:
        return value in (0, 1)
    info = np.iinfo(dtype)
    return int(info.min) <= int(value) <= int(info.max)


def full_like_dtype(value: bool | int | float, dtype: Any) -> jax.Array:
    """The scalar ``value`` as a 0-d array of ``dtype`` (no promotion involved)."""
    return jnp.asarray(np.asarray(value).astype(dtype))


def static_size(
    op: str,
    keyword: str,
    value: Any,
    sources: str,
    traced: bool,
    default: Callable[[], SupportsInt],
) -> int:
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


def static_total(op: str, keyword: str, value: Any, lengths: Any) -> int:
    """:func:`static_size` of a row count: ``value``, else ``sum(lengths)`` when concrete.

    ``lengths`` as the caller passed it (see :func:`concrete_values`).
    """
    concrete = concrete_values(lengths)
    return static_size(
        op,
        keyword,
        value,
        "lengths",
        concrete is None,
        lambda: exact_sum(concrete[0]),  # type: ignore[index]
    )


def check_output_size(op: str, argument: str, shape: tuple[int, ...]) -> None:
    """``ValueError`` naming ``argument`` when an output of ``shape`` would not fit int32 indices.

    Runs before anything is traced or allocated, so a huge static size is a
    clear error rather than an ``OverflowError`` or an allocation failure in XLA.
    """
    if math.prod(shape) > INT32_MAX:
        raise value_error(
            op,
            "an output of at most 2**31 - 1 elements",
            f"shape {tuple(shape)} from {argument}",
        )


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
    equal_total: bool = False,
    max_length: int | None = None,
    max_name: str = "max_length",
    name: str = "lengths",
) -> None:
    """The value checks on segment lengths that several operators share.

    ``lengths >= 0``; ``sum(lengths) <= total`` (``== total`` with
    ``equal_total``; when ``total`` is given); ``max(lengths) <= max_length``
    (when given). ``lengths`` is the argument as passed: concrete checks run in
    NumPy, traced ones in JAX, both in the lengths' own dtype or clipped before
    any widening, so nothing wraps, and the messages quote the caller's values.
    The traced checks are reductions (no dynamic indexing), so they also run on
    sharded arrays.
    """
    if _checks_off():
        return
    values = concrete_values(lengths)
    xp, lv = (np, values[0]) if values is not None else (jnp, replicated(jnp.asarray(lengths)))
    if lv.shape[0] == 0:
        return
    info = np.iinfo(lv.dtype)
    if info.min < 0:
        first_negative = xp.argmin(lv)
        check_values(
            op,
            xp.min(lv) >= 0,
            f"{name} >= 0",
            f"{name}[{{}}] = {{}}",
            first_negative,
            xp.min(lv),
        )
    if total is not None:
        relation = "==" if equal_total else "<="
        expected = f"sum({name}) {relation} {total_name} = {total}"
        if xp is np:
            _check_sum_concrete(op, lv, total, equal_total, expected, name)
        else:
            _check_sum_traced(op, lv, total, equal_total, expected, name)
    if max_length is not None and max_length < info.max:
        longest = xp.argmax(lv)
        check_values(
            op,
            xp.max(lv) <= xp.asarray(max_length, lv.dtype),
            f"{name} <= {max_name} = {max_length}",
            f"{name}[{{}}] = {{}}",
            longest,
            xp.max(lv),
        )


def clip_in_dtype(x: Any, lo: int, hi: int) -> Any:
    """``clip(x, lo, hi)`` of an integer array in its own dtype (NumPy or JAX).

    The bounds are first cut to the dtype's range, so neither they nor the
    values ever wrap; widen the result afterwards.
    """
    info = np.iinfo(x.dtype)
    lo, hi = max(lo, int(info.min)), min(hi, int(info.max))
    if isinstance(x, np.ndarray):
        return np.clip(x, np.asarray(lo, x.dtype), np.asarray(hi, x.dtype))
    return lax.clamp(jnp.asarray(lo, x.dtype), x, jnp.asarray(hi, x.dtype))


def clip_lengths(lengths: Any, high: int, xp: Any = jnp) -> Any:
    """``clip(lengths, 0, high)`` in the lengths' own dtype (no wrap), then widened.

    int32 for JAX arrays (``high`` must fit int32), int64 for NumPy arrays.
    """
    if xp is np:
        return clip_in_dtype(np.asarray(lengths), 0, high).astype(np.int64)
    return to_int32(lengths, 0, high)


def to_int32(x: jax.Array, lo: int, hi: int) -> jax.Array:
    """``clip(x, lo, hi)`` as int32, clipping in ``x``'s own dtype first (no overflow).

    ``lo`` and ``hi`` must fit int32.
    """
    return clip_in_dtype(x, lo, hi).astype(jnp.int32)


def exact_sum(lengths: np.ndarray) -> int:
    """``sum(max(lengths, 0))`` as a Python int (never wraps; for messages)."""
    return int(np.maximum(lengths, 0).astype(object).sum())


def _check_sum_concrete(op, lv, total, equal_total, expected, name):
    # Each length clipped to total + 1 before the int64 sum: exact up to the bound.
    bounded = int(np.sum(clip_lengths(lv, total + 1, np)))
    ok = bounded == total if equal_total else bounded <= total
    if not ok:
        raise value_error(op, expected, f"sum({name}) = {exact_sum(lv)}")


# The traced sum saturates here: above any total (row counts fit int32), and
# twice it still fits uint32, in which the saturating sum runs.
_SUM_CAP = 2**31


def _saturating_add(cap: int, dtype: Any) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """``min(a + b, cap)`` for entries in ``[0, cap]``, never computing a wrapped sum.

    Associative on that range, so it serves prefix sums and reductions alike.
    """
    cap_arr = jnp.asarray(cap, dtype)
    return lambda a, b: jnp.where(a > cap_arr - b, cap_arr, a + b)


def _saturating_sum(x: jax.Array, cap: int) -> jax.Array:
    """``min(sum(x), cap)`` of a 1-D unsigned array with entries in ``[0, cap]``, never wrapping.

    A pairwise tree of saturating adds (elementwise ops only: XLA CPU crashes
    compiling a custom reducer beside a ``debug_check``).
    """
    add = _saturating_add(cap, x.dtype)
    while x.shape[0] > 1:
        if x.shape[0] % 2:
            x = jnp.concatenate([x, jnp.zeros((1,), x.dtype)])
        x = add(x[0::2], x[1::2])
    return x[0]


def _check_sum_traced(op, lv, total, equal_total, expected, name):
    clipped = clip_in_dtype(lv, 0, _SUM_CAP).astype(jnp.uint32)
    total_sum = _saturating_sum(clipped, _SUM_CAP)
    cap = jnp.asarray(_SUM_CAP, jnp.uint32)
    check_values(op, total_sum < cap, expected, f"sum({name}) >= 2**31")
    bound = jnp.asarray(min(total, _SUM_CAP), jnp.uint32)  # totals are row counts: < 2**31
    ok = total_sum == bound if equal_total else total_sum <= bound
    check_values(op, ok | (total_sum == cap), expected, f"sum({name}) = {{}}", total_sum)


# Below this many entries a prefix sum is XLA's own (``jnp.cumsum``); above it,
# a parallel ``lax.associative_scan``. On XLA CPU the scan runs 1.5-2x faster
# (4M entries: 22 against 48 ms) but unrolls into ~2 log2(n) levels of slices
# and pads that take 0.3-0.6 s more to compile: worth it only where each call
# saves milliseconds.
_SCAN_MIN = 1 << 20


def cumsum(x: jax.Array, axis: int = 0) -> jax.Array:
    """Inclusive cumulative sum along ``axis`` as int32 (bool or integer ``x``); exact."""
    x = x.astype(jnp.int32)
    if x.shape[axis] < _SCAN_MIN:
        return jnp.cumsum(x, axis=axis, dtype=jnp.int32)
    return lax.associative_scan(jnp.add, x, axis=axis)


def saturating_cumsum(x: jax.Array, cap: int) -> jax.Array:
    """Inclusive cumulative sum of int32 ``x`` (entries in ``[0, cap]``) that stops at ``cap``.

    Saturates instead of wrapping, so offsets past 2**31 stay past every row.
    When ``len(x) * cap`` fits int32 no prefix can wrap, and a plain prefix sum
    clipped to ``cap`` is the same (and compiles in a fraction of the time).
    """
    if x.shape[0] * cap <= INT32_MAX:
        return jnp.minimum(cumsum(x), cap)
    return lax.associative_scan(_saturating_add(cap, jnp.int32), x.astype(jnp.int32))


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

    Offsets use ``clip(lengths, 0, rows)`` (clipped in the lengths' own dtype,
    summed saturating at ``rows``, so nothing wraps); each segment is then
    truncated to ``max_length`` (when given) and to the ``rows`` available, so
    that ``off[n] + t`` for ``t < effective[n]`` always lies in ``[0, rows)``:
    the safe result of invalid lengths under tracing. For valid lengths,
    ``effective == lengths``.
    """
    clipped = clip_lengths(replicated(lengths), rows)
    ends = saturating_cumsum(clipped, rows)
    offsets = jnp.concatenate([jnp.zeros((1,), jnp.int32), ends])[:-1]
    effective = jnp.minimum(clipped, rows - offsets)
    if max_length is not None:
        effective = jnp.minimum(effective, max_length)
    return offsets, effective


def row_segments(
    offsets: jax.Array, effective: jax.Array, rows: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """For each of ``rows`` flat rows: its segment, its position in it, and whether it holds data.

    ``offsets`` and ``effective`` come from :func:`segments`. The segment of row
    ``r`` is the last one starting at or before ``r`` (empty segments share
    offsets, so the last is the one that can hold it); rows past their
    segment's effective length (padding) are not ``valid``. Segments and
    positions are in range even where not valid, so they can index.
    """
    segment = count_at_most(offsets, rows) - 1  # offsets[0] == 0: never negative
    position = jnp.arange(rows, dtype=jnp.int32) - offsets[segment]
    return segment, position, position < effective[segment]


def first_failure(xp: Any, bad: Any) -> tuple[Any, Any]:
    """``(any(bad), index of the first true entry)`` of a flat bool array, by reductions."""
    return xp.any(bad), xp.argmax(bad)


def pick(xp: Any, x: Any, index: Any) -> Any:
    """``x[index]`` of a flat array, as a reduction under JAX (no dynamic indexing)."""
    if xp is np:
        return x[index]
    low = jnp.asarray(jnp.iinfo(x.dtype).min if x.dtype != jnp.bool_ else False, x.dtype)
    hit = lax.broadcasted_iota(jnp.int32, x.shape, 0) == jnp.asarray(index).astype(jnp.int32)
    return jnp.max(jnp.where(hit, x, low))


def replicated(x: jax.Array) -> jax.Array:
    """``x`` resharded to replicated when it is sharded over ``Explicit`` mesh axes.

    The prefix sums and scatters that segment arithmetic needs have no
    sharding rule on ``Explicit`` axes (JAX raises ``ShardingTypeError``), so
    the small ``[N]`` lengths (and the masks and ids a prefix sum runs over)
    are gathered first: what XLA does on its own for ``Auto`` axes. A no-op
    for unsharded, ``Auto`` and ``shard_map``-local arrays (and before JAX had
    explicit sharding).
    """
    typeof = getattr(jax, "typeof", None)
    sharding = getattr(typeof(x), "sharding", None) if typeof is not None else None
    spec = getattr(sharding, "spec", None)
    if not spec or all(axis is None for axis in spec):
        return x
    explicit = getattr(getattr(jax.sharding, "AxisType", None), "Explicit", None)
    if explicit is None:  # a JAX without explicit sharding
        return x
    axis_types = dict(zip(sharding.mesh.axis_names, sharding.mesh.axis_types, strict=True))
    names = {
        n
        for axis in spec
        if axis is not None
        for n in (axis if isinstance(axis, tuple) else (axis,))
    }
    if not any(axis_types.get(n) == explicit for n in names):
        return x
    return jax.sharding.reshard(x, jax.sharding.PartitionSpec())


def take_in_bounds(x: Any, index: jax.Array) -> jax.Array:
    """``x[index]`` along axis 0 for indices in ``[0, len(x))`` *by construction*.

    No clamp or fill per index (``mode="promise_in_bounds"``): on XLA CPU a
    clamped gather of 32,768 rows of 128 floats took 1.8x the unclamped one.
    Use it only where every index is provably in range (``where(valid, i, 0)``
    with ``i`` in range where valid); elsewhere, ``jnp.take(..., mode="clip")``.
    """
    return jnp.asarray(x).at[index].get(mode="promise_in_bounds")


def broadcast_rows(mask: jax.Array, ndim: int) -> jax.Array:
    """Reshape a mask over leading axes so it lines up with an array of rank ``ndim``.

    Explicit, so that ``jax_numpy_rank_promotion="raise"`` is satisfied.
    """
    return mask.reshape(mask.shape + (1,) * (ndim - mask.ndim))


# --------------------------------------------------------------------------- #
# Eager calls: one compiled program per bucket of data-dependent sizes
# --------------------------------------------------------------------------- #


def is_eager(*arrays: Any) -> bool:
    """True when no array is traced: the call runs outside ``jit``, ``vmap``, ``grad``.

    Call it on the converted arrays (after ``jnp.asarray``): inside ``jit`` even
    a constant is traced then, so a closed-over NumPy mask is not taken as eager.
    """
    return not any(is_traced(a) for a in arrays)


def bucket(size: int, cap: int) -> int:
    """The static size an eager call compiles for: the power of two ``>= size``, at most ``cap``.

    An eager call whose output size depends on the data (``boolean_mask``
    without ``size=``, ``pack_rnn_sequence`` without ``max_length=``, ...)
    computes the bucketed size and :func:`trim` s the result on the host, so
    calls whose sizes change reuse one program per power of two instead of
    compiling one per size. ``cap`` is the largest size the inputs allow
    (never less than ``size``).
    """
    return max(size, min(1 << max(size - 1, 0).bit_length(), cap))


def trim(x: jax.Array, size: int, axis: int = 0) -> jax.Array:
    """``x`` cut to ``size`` entries along ``axis``, on the host: no program compiled per size.

    ``x[:size]`` would compile a slice for every new ``size``; the copy to
    NumPy and back is a ``memcpy`` on CPU. Keeps ``x``'s sharding when it is
    a mesh sharding (replicated outputs of the data-dependent ops).
    """
    if x.shape[axis] == size:
        return x
    host = np.asarray(x)[(slice(None),) * axis + (slice(0, size),)]
    return _like(host, x)


def pad_rows(x: jax.Array, size: int, axis: int = 0, value: Any = 0) -> jax.Array:
    """``x`` padded with ``value`` to ``size`` entries along ``axis``, on the host (:func:`trim`).

    Eager calls pad an input whose length changes from call to call (the
    concatenated rows of a batch) to its :func:`bucket`, where the op never
    reads past the true length, so that the calls share a program.
    """
    if x.shape[axis] == size:
        return x
    host = np.asarray(x)
    shape = list(host.shape)
    shape[axis] = size
    padded = np.full(shape, value, host.dtype)
    padded[(slice(None),) * axis + (slice(0, host.shape[axis]),)] = host
    return _like(padded, x)


def pad_to_bucket(x: jax.Array, axis: int = 0, value: Any = 0) -> jax.Array:
    """:func:`pad_rows` to the :func:`bucket` of ``x``'s length along ``axis``.

    Not inside :func:`unchecked`: there invalid lengths are clipped to the
    true length, which padding would move.
    """
    if _checks_off():
        return x
    return pad_rows(x, bucket(x.shape[axis], INT32_MAX), axis, value)


def _like(host: np.ndarray, x: jax.Array) -> jax.Array:
    """``host`` on ``x``'s devices: with its mesh sharding, else the default device."""
    if isinstance(x.sharding, jax.sharding.NamedSharding):
        return jax.device_put(host, x.sharding)
    return jax.device_put(host)
