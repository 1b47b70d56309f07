"""Helpers every operator's tests share."""

from __future__ import annotations

import contextlib

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


@st.composite
def ragged_lengths(draw, max_segments: int = 6, max_length: int = 8):
    """Lengths for ragged batches: N = 0, zero lengths and one long segment all occur."""
    n = draw(st.integers(0, max_segments))
    lengths = draw(st.lists(st.integers(0, max_length), min_size=n, max_size=n))
    if n and draw(st.booleans()):
        lengths[draw(st.integers(0, n - 1))] = draw(st.integers(max_length, 3 * max_length))
    return np.asarray(lengths, dtype=np.int32)


def raises_eager_and_checkified(fn, args, match: str, static_kwargs=None) -> None:
    """The documented value error is raised eagerly and through checkify under jit."""
    static_kwargs = static_kwargs or {}
    with pytest.raises(ValueError, match=match):
        fn(*args, **static_kwargs)
    jitted = jax.jit(lambda *a: fn(*a, **static_kwargs))
    with pytest.raises(ValueError, match=match):
        jaxops.checked(jitted)(*args)
