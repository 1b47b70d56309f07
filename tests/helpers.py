"""Helpers every operator's tests share."""

from __future__ import annotations

import contextlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import strategies as st

import jaxops

# Data dtypes every pure data-movement op must accept (float64 needs x64).
FLOAT_DTYPES = [jnp.bfloat16, jnp.float16, jnp.float32, jnp.float64]
DATA_DTYPES = [*FLOAT_DTYPES, jnp.int32, jnp.bool_]


def x64_for(dtype) -> contextlib.AbstractContextManager:
    """``jax.enable_x64(True)`` for 64-bit dtypes, a no-op context otherwise."""
    return jax.enable_x64(True) if np.dtype(dtype).itemsize == 8 else contextlib.nullcontext()


def random_data(rng: np.random.Generator, shape, dtype) -> np.ndarray:
    """Small distinct-ish values that every dtype represents exactly."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    return rng.integers(-50, 50, size=shape).astype(dtype)


def offsets(lengths) -> np.ndarray:
    """Exclusive cumulative sum in NumPy (the reference's ``off``)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.cumsum(lengths) - lengths


def ulp_distance(actual, expected, dtype) -> np.ndarray:
    """Elementwise distance in units in the last place of the 16-bit float ``dtype``.

    Counts the representable values between the two (through their bit patterns,
    so it holds across binades and subnormals); ``-0.0`` and ``+0.0`` are 0 apart.
    """
    assert np.dtype(dtype).itemsize == 2

    def ordinal(x):
        bits = np.asarray(x).astype(dtype).view(np.int16).astype(np.int64)
        return np.where(bits < 0, -(bits & 0x7FFF), bits)

    return np.abs(ordinal(actual) - ordinal(expected))


def sequential_sum_16(x, dtype, axis: int = -1) -> np.ndarray:
    """A naive 16-bit sum: left to right, every partial sum rounded to ``dtype`` (keepdims)."""
    x = np.asarray(x).astype(dtype)
    total = np.cumsum(x, axis=axis, dtype=dtype)
    return np.take(total, [-1], axis=axis)


@st.composite
def ragged_lengths(draw, max_segments: int = 6, max_length: int = 8):
    """Lengths for ragged batches: N = 0, zero lengths and one long segment all occur."""
    n = draw(st.integers(0, max_segments))
    lengths = draw(st.lists(st.integers(0, max_length), min_size=n, max_size=n))
    if n and draw(st.booleans()):
        lengths[draw(st.integers(0, n - 1))] = draw(st.integers(max_length, 3 * max_length))
    return np.asarray(lengths, dtype=np.int32)


def assert_message(excinfo: pytest.ExceptionInfo, op: str, match: str) -> None:
    """The error message fully matches ``op + ": " + match`` and reads ``"<op>: expected ..."``.

    Anchored at both ends, so a stray prefix or suffix (such as checkify's
    " (`check` failed)", which :func:`jaxops.checked` must strip) fails.
    """
    message = str(excinfo.value)
    assert message.startswith(f"{op}: expected "), f"{message!r} does not start with {op!r}"
    pattern = rf"{re.escape(op)}: {match}"
    assert re.fullmatch(pattern, message), f"{message!r} does not fully match {pattern!r}"


@contextlib.contextmanager
def raises_message(error: type[Exception], op: str, match: str):
    """``pytest.raises(error)`` whose message fully matches ``"<op>: " + match``."""
    with pytest.raises(error) as excinfo:
        yield excinfo
    assert_message(excinfo, op, match)


def raises_eager_and_checkified(fn, args, match: str, static_kwargs=None, *, op: str) -> None:
    """The documented value error is raised eagerly and through checkify under jit.

    The message must fully match ``op + ": " + match`` in both cases (``match``
    is a regex for the whole rest of the message, starting with "expected").
    """
    static_kwargs = static_kwargs or {}
    with raises_message(ValueError, op, match):
        fn(*args, **static_kwargs)
    jitted = jax.jit(lambda *a: fn(*a, **static_kwargs))
    with raises_message(ValueError, op, match):
        jaxops.checked(jitted)(*args)
