"""Expand: bidirectional NumPy broadcasting, and its sum-to-size gradient."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxops._src import checks


def _static_shape(op: str, name: str, shape, *, allow_keep: bool) -> tuple[int, ...]:
    """A tuple of Python ints from a static shape (``-1`` allowed when ``allow_keep``)."""
    if checks.is_traced(shape) or (isinstance(shape, (jax.Array, np.ndarray)) and shape.ndim != 1):
        raise checks.type_error(op, f"`{name}` to be a static tuple of ints", f"{name}={shape!r}")
    try:
        dims = tuple(shape)
    except TypeError as e:
        raise checks.type_error(
            op, f"`{name}` to be a static tuple of ints", f"{name}={shape!r}"
        ) from e
    dims = tuple(checks.static_int(op, f"{name}[{i}]", d) for i, d in enumerate(dims))
    lowest = -1 if allow_keep else 0
    for i, d in enumerate(dims):
        if d < lowest:
            raise checks.value_error(op, f"{name}[{i}] >= {lowest}", f"{name}={dims}")
    return dims


def _expanded_shape(x_shape: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The output shape of ``expand``, or a ``ValueError`` naming the axis."""
    ndim = max(len(x_shape), len(shape))
    a_dims = (1,) * (ndim - len(x_shape)) + tuple(x_shape)
    b_dims = (1,) * (ndim - len(shape)) + tuple(shape)
    out = []
    for axis, (a, b) in enumerate(zip(a_dims, b_dims, strict=True)):
        if b == -1:
            out.append(a)
        elif a == 1:
            out.append(b)
        elif b in (1, a):
            out.append(a)
        else:
            raise checks.value_error(
                "expand",
                f"x.shape {tuple(x_shape)} and shape {tuple(shape)} to broadcast",
                f"size {a} against {b} at output axis {axis}",
                "Sizes broadcast when equal or when one of them is 1.",
            )
    return tuple(out)


def expand(x: ArrayLike, shape: Sequence[int]) -> jax.Array:
    """Broadcasts ``x`` against ``shape`` in both directions, as Caffe2's ``Expand``.

    Unlike ``jnp.broadcast_to``, the target may be smaller than ``x`` along an
    axis: the shapes are aligned on the right, the shorter is padded with 1s,
    and each output size is ``b`` where ``x`` has 1, else ``x``'s size (when
    ``b`` is 1 or equal). ``-1`` in ``shape`` keeps ``x``'s size. So ``[3, 1]``
    with ``(1, 4)`` gives ``[3, 4]``, and ``[4]`` with ``(3, 1)`` gives ``[3, 4]``.

    Args:
      x: array of any numeric or bool dtype.
      shape: static tuple of ints (entries ``>= -1``).

    Returns:
      The broadcast array, of ``x.dtype``.

    Raises:
      TypeError: ``shape`` is not a static tuple of ints.
      ValueError: an entry below -1, or sizes that do not broadcast (the
        message names the output axis).

    Gradients:
      Reverse-mode w.r.t. floating ``x``: ``expand_gradient(g, x.shape)``. No
      residuals.

    Examples:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.expand(jnp.array([[1], [2], [3]]), (1, 4)).shape
      (3, 4)
      >>> jaxops.expand(jnp.arange(4), (3, 1)).shape
      (3, 4)

    Caffe2: ``Expand``.
    """
    x = checks.as_array("expand", "x", x, "data")
    shape = _static_shape("expand", "shape", shape, allow_keep=True)
    out_shape = _expanded_shape(x.shape, shape)
    checks.check_output_size("expand", f"shape={shape}", out_shape)
    return _expand_rule(out_shape, x.shape, x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _expand_rule(out_shape, x_shape, x):
    return jnp.broadcast_to(x.reshape((1,) * (len(out_shape) - len(x_shape)) + x_shape), out_shape)


def _expand_rule_fwd(out_shape, x_shape, x):
    return _expand_rule(out_shape, x_shape, x), None


def _expand_rule_bwd(out_shape, x_shape, residuals, g):
    del out_shape, residuals
    if not jnp.issubdtype(g.dtype, jnp.floating):
        return (None,)
    return (_sum_to_shape(g, x_shape),)


_expand_rule.defvjp(_expand_rule_fwd, _expand_rule_bwd)


def _sum_to_shape(g: jax.Array, x_shape: tuple[int, ...]) -> jax.Array:
    """Sums ``g`` over the leading axes ``x`` lacks and the axes where ``x`` has 1."""
    lead = g.ndim - len(x_shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, d in enumerate(x_shape) if d == 1 and g.shape[lead + i] != 1
    )
    if not axes:
        return g.reshape(x_shape)
    if g.dtype == jnp.bool_:
        summed = jnp.any(g, axis=axes, keepdims=True)
    else:
        low = jnp.issubdtype(g.dtype, jnp.floating) and jnp.finfo(g.dtype).bits < 32
        summed = jnp.sum(g, axis=axes, keepdims=True, dtype=jnp.float32 if low else None)
    return summed.astype(g.dtype).reshape(x_shape)


def expand_gradient(g: ArrayLike, x_shape: Sequence[int]) -> jax.Array:
    """The gradient of :func:`expand`: sums ``g`` back to ``x_shape`` (``sum_to_size``).

    Sums over the leading axes that ``x`` lacks and over every axis where
    ``x`` has size 1, returning an array of shape ``x_shape``. 16-bit floats
    accumulate in float32; bool ``g`` reduces with ``any``.

    Args:
      g: the cotangent of ``expand``'s output, any numeric or bool dtype.
      x_shape: static tuple of ints, the shape of ``expand``'s input.

    Returns:
      ``x_shape`` array of ``g.dtype``.

    Raises:
      TypeError: ``x_shape`` is not a static tuple of ints.
      ValueError: ``g``'s shape is not what ``expand`` of an ``x_shape`` input
        can produce.

    Examples:
      >>> import jax.numpy as jnp, jaxops
      >>> jaxops.expand_gradient(jnp.ones((2, 3, 4)), (3, 1))
      Array([[8.],
             [8.],
             [8.]], dtype=float32)

    Caffe2: ``ExpandGradient`` (PyTorch: ``Tensor.sum_to_size``).
    """
    op = "expand_gradient"
    g = checks.as_array(op, "g", g, "data")
    x_shape = _static_shape(op, "x_shape", x_shape, allow_keep=False)
    lead = g.ndim - len(x_shape)
    if lead < 0 or any(d not in (1, g.shape[lead + i]) for i, d in enumerate(x_shape)):
        raise checks.value_error(
            op,
            f"g.shape to be an expansion of x_shape {x_shape}",
            f"g.shape {tuple(g.shape)}",
        )
    return _sum_to_shape(g, x_shape)
