"""One bad-input sweep over every public array op (SPEC §1 rules 4, 6, 7, 8; §2-§5, §7, §8).

The sweep is a table: one :class:`Case` per (public op x applicable bad-input
class). Each case is run in every mode its kind calls for:

* ``static`` (wrong type, dtype, rank, shape or static argument): the error is
  raised eagerly, at trace time under ``jit``, and under
  ``checked(jit(...))``, with a message that starts ``"<op>: expected "``.
  Huge static sizes run in a child process (see :func:`isolated_results`), so
  an implementation that tries to allocate them, or aborts, fails its own
  rows instead of the whole run or the machine.
* ``value`` (negative / overflowing / huge lengths, out-of-range indices,
  uncovered unmask positions, short streams): ``ValueError`` eagerly, through
  ``checked(jit(f))`` and through ``checked(jit(vmap(f)))`` on a batch of two
  whose second element is bad; and ``jit(f)`` without checks returns the
  documented safe result, which a NumPy model computes here in Python ints
  (so nothing wraps).
* ``valid`` (narrow and wide lengths dtypes, vacuous static bounds): eager and
  ``checked(jit(vmap(f)))`` return the model's result (for valid input the
  model is the exact int32 result) and raise nothing.

A new public op cannot land without rows: :func:`test_every_public_op_is_swept`
and :func:`test_every_applicable_bad_input_class_has_rows` read ``jaxops.__all__``
and the ops' signatures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import json
import os
import re
import select
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxops

HUGE = 2**40
I32_MAX = 2**31 - 1
U64_MAX = 2**64 - 1
LENGTH_DTYPES = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"]
CHECKIFY_SUFFIX = "(`check` failed)"

# --------------------------------------------------------------------------- #
# NumPy models of the documented (safe) results: loops over Python ints
# --------------------------------------------------------------------------- #


def _ints(lengths) -> list[int]:
    """The caller's lengths as exact Python ints (``tolist`` never wraps)."""
    return [int(v) for v in np.asarray(lengths).tolist()]


def _segments(lengths, rows: int, bound: int | None = None):
    """SPEC's safe segments: offsets from ``max(lengths, 0)``, each segment cut to what fits.

    Segment ``n`` reads rows ``[off[n], off[n] + eff[n])`` with ``eff[n] =
    min(max(lengths[n], 0), rows - off[n], bound)`` (never below 0). For valid
    lengths ``eff == lengths``.
    """
    offsets, effective, off = [], [], 0
    for length in _ints(lengths):
        length = max(length, 0)
        eff = max(0, min(length, rows - off))
        if bound is not None:
            eff = min(eff, bound)
        offsets.append(off)
        effective.append(eff)
        off += length
    return offsets, effective


def pack_model(values, lengths, *, max_length=None, pad_value=0, time_major=True):
    values = np.asarray(values)
    lens = _ints(lengths)
    t_len = max([max(v, 0) for v in lens], default=0) if max_length is None else max_length
    out = np.full((len(lens), t_len, *values.shape[1:]), pad_value, values.dtype)
    for n, (off, eff) in enumerate(zip(*_segments(lens, values.shape[0], t_len), strict=True)):
        out[n, :eff] = values[off : off + eff]
    return out.swapaxes(0, 1) if time_major else out


def unpack_model(packed, lengths, *, total_length=None, time_major=True):
    packed = np.asarray(packed)
    by_seq = packed.swapaxes(0, 1) if time_major else packed
    lens = _ints(lengths)
    total = sum(max(v, 0) for v in lens) if total_length is None else total_length
    out = np.zeros((total, *packed.shape[2:]), packed.dtype)
    for n, (off, eff) in enumerate(zip(*_segments(lens, total, by_seq.shape[1]), strict=True)):
        out[off : off + eff] = by_seq[n, :eff]
    return out


def top_k_model(data, lengths, *, k, max_length=None):
    data = np.asarray(data)
    lens = _ints(lengths)
    values = np.zeros((len(lens), k), data.dtype)
    indices = np.full((len(lens), k), -1, np.int32)
    for n, (off, eff) in enumerate(zip(*_segments(lens, data.shape[0], max_length), strict=True)):
        segment = data[off : off + eff]
        order = sorted(range(eff), key=lambda i: (-float(segment[i]), i))[:k]
        values[n, : len(order)] = segment[order]
        indices[n, : len(order)] = order
    return values, indices


def top_k_gradient_model(lengths, indices, g, *, data_length):
    indices, g = np.asarray(indices), np.asarray(g)
    out = np.zeros((data_length,), g.dtype)
    offsets, effective = _segments(lengths, data_length)
    for n in range(indices.shape[0]):
        for j in range(indices.shape[1]):
            i = int(indices[n, j])
            if 0 <= i < effective[n]:
                out[offsets[n] + i] += g[n, j]
    return out


def mask_lengths_model(lengths, mask):
    mask = np.asarray(mask)
    offsets, effective = _segments(lengths, mask.shape[0])
    counts = [int(mask[off : off + eff].sum()) for off, eff in zip(offsets, effective, strict=True)]
    return np.asarray(counts, np.asarray(lengths).dtype)


def unmask_model(masks, values, *, fill_value=0):
    masks, values = [np.asarray(m) for m in masks], [np.asarray(v) for v in values]
    out = np.full((masks[0].shape[0], *values[0].shape[1:]), fill_value, values[0].dtype)
    used = [0] * len(masks)
    for p in range(masks[0].shape[0]):
        for i, mask in enumerate(masks):
            if mask[p]:  # the first true mask wins p
                if used[i] < values[i].shape[0]:
                    out[p] = values[i][used[i]]
                used[i] += 1
                break
    return out


def sequence_mask_model(x, lengths, *, fill_value=-np.inf):
    """``mode="sequence"``, ``axis=1`` on a matrix: ``(i, j)`` masked when ``j >= lengths[i]``."""
    out = np.array(x)
    for i, length in enumerate(_ints(lengths)[: out.shape[0]]):
        out[i, max(length, 0) :] = fill_value
    return out


def offsets_model(lengths):
    """``[0, off[1], ..., sum]`` of ``max(lengths, 0)``, each sum saturating at ``2**31 - 1``."""
    out, off = [0], 0
    for length in _ints(lengths):
        off = min(off + max(length, 0), I32_MAX)
        out.append(off)
    return np.asarray(out, np.int32)


def _row_fill(lengths, total_length: int, fill) -> np.ndarray:
    """``[total_length]`` int32: ``fill(n, eff)`` over segment ``n``'s safe rows, -1 elsewhere."""
    out = np.full((total_length,), -1, np.int32)
    for n, (off, eff) in enumerate(zip(*_segments(lengths, total_length), strict=True)):
        if eff:  # (off may be past int64 when eff == 0)
            out[off : off + eff] = fill(n, eff)
    return out


def segment_ids_model(lengths, *, total_length):
    return _row_fill(lengths, total_length, lambda n, eff: n)


def range_fill_model(lengths, *, total_length):
    return _row_fill(lengths, total_length, lambda n, eff: np.arange(eff))


def segment_lengths_model(segment_ids, *, num_segments):
    ids = _ints(segment_ids)
    return np.asarray([ids.count(n) for n in range(num_segments)], np.int32)


def segment_top_k_model(
    data, segment_ids, *, k, num_segments, indices_are_sorted=False, max_length=None
):
    """The rows grouped by id, then :func:`top_k_model` over the groups (positions in ``data``).

    Without the sorted promise the grouping is a stable sort by id (ids outside
    ``[0, num_segments)`` last), which for valid input is the exact result with
    or without ``max_length``; a segment longer than ``max_length`` is cut to
    its first ``max_length`` rows (``lengths_top_k``'s clipping). With
    ``indices_are_sorted=True`` the promise is trusted: the negative ids are
    shifted out and segment ``n`` is read as the ``count(n)`` rows from its
    offset, as they lie (positions clamped to the last row).
    """
    data, ids = np.asarray(data), _ints(segment_ids)
    rows = len(ids)
    values = np.zeros((num_segments, k), data.dtype)
    indices = np.full((num_segments, k), -1, np.int32)
    if rows == 0 or num_segments == 0:
        return values, indices
    counts = [ids.count(n) for n in range(num_segments)]
    if indices_are_sorted:
        skipped = sum(i < 0 for i in ids)
        order = [min(r + skipped, rows - 1) for r in range(rows)]
    else:
        order = sorted(range(rows), key=lambda r: ids[r] if 0 <= ids[r] < num_segments else rows)
    values, within = top_k_model(data[order], counts, k=k, max_length=max_length)
    offsets, _ = _segments(counts, rows)
    for n in range(num_segments):
        for j in range(k):
            if within[n, j] >= 0:
                indices[n, j] = order[offsets[n] + int(within[n, j])]
    return values, indices


def segment_softmax_model(logits, segment_ids, *, num_segments, indices_are_sorted=False):
    """Softmax over each segment's rows (float64, then cast); rows of no segment and all -inf 0."""
    x, ids = np.asarray(logits), _ints(segment_ids)
    out = np.zeros_like(x)
    for n in range(num_segments):
        rows = [r for r, i in enumerate(ids) if i == n]
        if not rows:
            continue
        seg = x[rows].astype(np.float64)
        top = seg.max(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            e = np.exp(seg - np.where(top > -np.inf, top, np.inf))
            total = e.sum(axis=0)
            out[rows] = np.where(total == 0, 0.0, e / total).astype(x.dtype)
    return out


def ragged_model(values, lengths):
    """The constructor only validates: its leaves are the arrays as passed."""
    return values, lengths


def _next_fit(lengths, rows: int, num_rows: int, row_length: int):
    """SPEC §8's placement of the safe segments: ``(n, off, eff, row, col)`` of each placed one.

    In input order a segment goes into the current row if it fits, else it
    opens the next; one longer than ``row_length`` is skipped; the one that
    would open row ``num_rows`` and all after it are dropped.
    """
    row = col = 0
    placed = []
    for n, (off, eff) in enumerate(zip(*_segments(lengths, rows), strict=True)):
        if eff > row_length:
            continue
        if eff > row_length - col:
            row, col = row + 1, 0
        if row >= num_rows:
            break
        placed.append((n, off, eff, row, col))
        col += eff
    return placed


def pack_sequences_model(values, lengths, *, num_rows, row_length, pad_value=0):
    values = np.asarray(values)
    out = np.full((num_rows, row_length, *values.shape[1:]), pad_value, values.dtype)
    ids = np.full((num_rows, row_length), -1, np.int32)
    pos = np.full((num_rows, row_length), -1, np.int32)
    for n, off, eff, row, col in _next_fit(lengths, values.shape[0], num_rows, row_length):
        out[row, col : col + eff] = values[off : off + eff]
        ids[row, col : col + eff] = n
        pos[row, col : col + eff] = np.arange(eff)
    return out, ids, pos


def unpack_sequences_model(rows, lengths, *, total_length=None):
    rows = np.asarray(rows)
    num_rows, row_length = rows.shape[:2]
    total = sum(max(v, 0) for v in _ints(lengths)) if total_length is None else total_length
    out = np.zeros((total, *rows.shape[2:]), rows.dtype)
    for _, off, eff, row, col in _next_fit(lengths, total, num_rows, row_length):
        out[off : off + eff] = rows[row, col : col + eff]
    return out


def length_mask_model(lengths, max_length, *, dtype=bool):
    """``t < lengths[...]`` compared as Python ints (no dtype can wrap)."""
    lengths = np.asarray(lengths)
    flat = [[t < v for t in range(max_length)] for v in _ints(lengths.reshape(-1))]
    return np.asarray(flat, bool).reshape(*lengths.shape, max_length).astype(np.dtype(dtype))


def _int32_clipped(x) -> np.ndarray:
    """The safe reading of ids / positions: clipped to the int32 range, as int64 (exact)."""
    values = np.asarray(x)
    return np.asarray(
        [min(max(v, -(2**31)), I32_MAX) for v in _ints(values.reshape(-1))], np.int64
    ).reshape(values.shape)


def attention_mask_model(
    *,
    segment_ids=None,
    kv_segment_ids=None,
    positions=None,
    kv_positions=None,
    lengths=None,
    kv_lengths=None,
    q_len=None,
    kv_len=None,
    causal=False,
    window=None,
):
    """SPEC §8 in int64 (ids and positions clipped to int32 first, as the safe result)."""
    if kv_segment_ids is None and kv_lengths is None:
        kv_segment_ids, kv_lengths = segment_ids, lengths
    kv_positions = positions if kv_positions is None else kv_positions
    kv_len = q_len if kv_len is None else kv_len

    def side(ids, lens, pos, size):
        size = next(np.shape(a)[-1] for a in (ids, pos) if a is not None) if size is None else size
        if lens is not None:
            ids = np.where(length_mask_model(lens, size), 0, -1)
        pos = np.arange(size) if pos is None else _int32_clipped(pos)
        return (None if ids is None else _int32_clipped(ids)), pos

    (qi, qp), (ki, kp) = (
        side(segment_ids, lengths, positions, q_len),
        side(kv_segment_ids, kv_lengths, kv_positions, kv_len),
    )
    qp, kp = qp[..., :, None], kp[..., None, :]
    allowed = np.ones(np.broadcast_shapes(qp.shape, kp.shape), bool)
    if qi is not None:
        allowed = allowed & (qi[..., :, None] >= 0)
    if ki is not None:
        allowed = allowed & (ki[..., None, :] >= 0)
    if qi is not None and ki is not None:
        allowed = allowed & (qi[..., :, None] == ki[..., None, :])
    if causal:
        allowed = allowed & (kp <= qp)
    if window is not None:
        left, right = window if isinstance(window, tuple) else (window, window)
        allowed = allowed & (qp - left <= kp) & (kp <= qp + right)  # int64: no wrap
    shapes = [np.shape(a)[:-1] for a in (qi, qp[..., 0], ki, kp[..., 0, :]) if a is not None]
    shapes += [np.shape(v) for v in (lengths, kv_lengths) if v is not None]
    return np.broadcast_to(allowed, (*np.broadcast_shapes(*shapes), *allowed.shape[-2:]))


def keywords(model, *names):
    """``model`` taking the sweep's trailing positional arrays as the keywords ``names``."""

    def call(*args, **static_kwargs):
        cut = len(args) - len(names)
        return model(*args[:cut], **dict(zip(names, args[cut:], strict=True)), **static_kwargs)

    return call


def safe_softmax_model(logits, where=None, *, axis=-1):
    """SPEC §5 in float64, then cast: excluded entries 0 (always), empty slices 0.

    A NaN or ``+inf`` at an included entry makes its slice's included entries NaN,
    as in ``jax.nn.softmax(where=)``; the excluded ones stay 0.
    """
    x = np.asarray(logits)
    x64 = x.astype(np.float64)
    keep = np.ones(x.shape, bool) if where is None else np.broadcast_to(where, x.shape)
    z = np.where(keep, x64, -np.inf)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        top = z.max(axis=axis, keepdims=True)
        e = np.exp(z - np.where(top > -np.inf, top, np.inf))
        y = e / e.sum(axis=axis, keepdims=True)
    return np.where(keep & (top != -np.inf), y, 0.0).astype(x.dtype)


# --------------------------------------------------------------------------- #
# The table
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True, eq=False)
class Case:
    """One (public op x bad-input class) row of the sweep.

    ``make_args`` returns the op's array arguments (NumPy, converted per mode);
    ``static_kwargs`` are passed in every mode. ``error_class`` and
    ``message_regex`` (matched from the start of the message) describe the
    error (``None`` for valid rows). ``safe_result_model(*args,
    **static_kwargs)`` is the documented result under ``jit`` without checks
    (value rows) or the exact result (valid rows). ``make_valid`` returns
    valid arguments of the same shapes: the good element of the ``vmap``
    batch. ``traced_regex`` replaces ``message_regex`` for the traced modes.
    """

    op_name: str
    make_args: Callable[[], tuple]
    static_kwargs: dict[str, Any]
    error_class: type[Exception] | None
    message_regex: str | None
    safe_result_model: Callable[..., Any] | None
    id: str
    kind: str  # "static" | "value" | "valid"
    klass: str
    make_valid: Callable[[], tuple] | None = None
    traced_regex: str | None = None
    x64: bool = False
    array_kwargs: tuple[str, ...] = ()  # the last len(array_kwargs) args go by keyword

    @property
    def isolate(self) -> bool:
        """Rows with huge static sizes run in a child process (see ``isolated_results``)."""
        return self.klass.startswith("huge_static") or any(map(_huge, self.static_kwargs.values()))


def static_regex(op: str, *fragments: str) -> str:
    """``^<op>: expected `` then each fragment, in order, anywhere after."""
    return f"^{re.escape(op)}: expected " + "".join(f".*{re.escape(f)}" for f in fragments)


def value_regex(op: str, *invariants: str, tail: str = "") -> str:
    """``^<op>: expected <one of the invariants>, got `` (+ ``tail``, a regex)."""
    alternatives = "|".join(re.escape(inv) for inv in invariants)
    return f"^{re.escape(op)}: expected (?:{alternatives}), got {tail}"


NO_NEGATIVE = r"(?!.*-\d)"  # a wrapped sum shows up as a negative number


def a(values, dtype) -> np.ndarray:
    return np.asarray(values, dtype=np.dtype(dtype))


def shuffled(n: int) -> np.ndarray:
    """Distinct float32 values in a fixed scrambled order (37 is coprime to every n used)."""
    return ((np.arange(n) * 37) % n).astype(np.float32)


# 17 lengths of 2**28 sum past 2**32: wrapped int32 offsets would put segment 16 back at row 0.
HUGE_N = 17


def huge_lengths() -> np.ndarray:
    return np.full(HUGE_N, 2**28, np.int32)


def padded(*head, fill=0) -> np.ndarray:
    """``head`` then ``fill`` up to ``HUGE_N`` entries (int32): a huge row's valid twin."""
    return np.asarray([*head, *[fill] * (HUGE_N - len(head))], np.int32)


def narrow(dt: str) -> tuple[int, np.ndarray]:
    """``(L, [L, L, L])`` in ``dt``: 3L rows exceed the 8-bit dtypes' maximum."""
    length = 100 if np.dtype(dt).itemsize == 1 else 10
    return length, a([length] * 3, dt)


def outside(dt: str) -> list[int]:
    """Three ids of ``dt`` outside ``[0, 3)``: its maximum, ``2**(bits/2)`` and its minimum (or 3).

    ``2**32`` in the 64-bit dtypes narrows to 0 in int32, a valid id: it must still be ignored.
    """
    info = np.iinfo(np.dtype(dt))
    return [int(info.max), 2 ** (info.bits // 2), int(info.min) if info.min < 0 else 3]


def seg_ids(dt: str, layout: str) -> np.ndarray:
    """``layout`` with digits as ids and ``x``, ``y``, ``z`` as :func:`outside` ids, in ``dt``."""
    far = dict(zip("xyz", outside(dt), strict=True))
    return a([far[c] if c in far else int(c) for c in layout], dt)


CASES: list[Case] = []


def static(op, klass, detail, make_args, error, regex, **static_kwargs):
    array_kwargs = static_kwargs.pop("_array_kwargs", ())
    CASES.append(
        Case(
            op,
            make_args,
            static_kwargs,
            error,
            regex,
            None,
            f"{op}-{klass}-{detail}",
            "static",
            klass,
            array_kwargs=array_kwargs,
        )
    )


def value(op, klass, detail, make_args, make_valid, regex, model, **static_kwargs):
    x64 = static_kwargs.pop("_x64", False)
    traced_regex = static_kwargs.pop("_traced_regex", None)
    array_kwargs = static_kwargs.pop("_array_kwargs", ())
    CASES.append(
        Case(
            op,
            make_args,
            static_kwargs,
            ValueError,
            regex,
            model,
            f"{op}-{klass}-{detail}",
            "value",
            klass,
            make_valid=make_valid,
            traced_regex=traced_regex,
            x64=x64,
            array_kwargs=array_kwargs,
        )
    )


def valid(op, klass, detail, make_args, model, **static_kwargs):
    x64 = static_kwargs.pop("_x64", False)
    array_kwargs = static_kwargs.pop("_array_kwargs", ())
    CASES.append(
        Case(
            op,
            make_args,
            static_kwargs,
            None,
            None,
            model,
            f"{op}-{klass}-{detail}",
            "valid",
            klass,
            x64=x64,
            array_kwargs=array_kwargs,
        )
    )


def is_64(dtype: str) -> bool:
    return np.dtype(dtype).itemsize == 8


# The table is laid out by hand, one call per row.
# fmt: off

# ---- pack_rnn_sequence ------------------------------------------------------ #

OP = "pack_rnn_sequence"
V8 = lambda: np.arange(8, dtype=np.float32)
static(OP, "wrong_dtype", "lengths_float", lambda: (V8(), a([2, 1], "float32")), TypeError,
       static_regex(OP, "lengths", "integer"), max_length=2)
static(OP, "wrong_dtype", "values_complex", lambda: (a([1, 2, 3], "complex64"), a([2, 1], "int32")),
       TypeError, static_regex(OP, "values"), max_length=2)
static(OP, "wrong_rank", "lengths_2d", lambda: (V8(), a([[2, 1]], "int32")), ValueError,
       static_regex(OP, "lengths", "rank 1"), max_length=2)
static(OP, "wrong_rank", "values_0d", lambda: (a(1.0, "float32"), a([1], "int32")), ValueError,
       static_regex(OP, "values", "rank"), max_length=2)
static(OP, "bad_static", "max_length_negative", lambda: (V8(), a([2, 1], "int32")), ValueError,
       static_regex(OP, "max_length >= 0"), max_length=-1)
static(OP, "bad_static", "time_major_str", lambda: (V8(), a([2, 1], "int32")), TypeError,
       static_regex(OP, "time_major"), max_length=2, time_major="yes")
static(OP, "huge_static", "max_length_2**40", lambda: (V8(), a([2, 1], "int32")), ValueError,
       static_regex(OP, "max_length"), max_length=HUGE)
# The bound is the output's flat size: [2**29, 2, 4] has 2**32 elements.
static(OP, "huge_static", "max_length_flat_size",
       lambda: (np.zeros((8, 4), np.float32), a([2, 1], "int32")), ValueError,
       static_regex(OP, "max_length"), max_length=2**29)
static(OP, "unrepresentable", "pad_300_int8", lambda: (a([1, 2, 3], "int8"), a([2, 1], "int32")),
       ValueError, static_regex(OP, "pad_value", "int8"), max_length=2, pad_value=300)
static(OP, "unrepresentable", "pad_-1_uint8", lambda: (a([1, 2, 3], "uint8"), a([2, 1], "int32")),
       ValueError, static_regex(OP, "pad_value", "uint8"), max_length=2, pad_value=-1)
static(OP, "unrepresentable", "pad_1e10_float16",
       lambda: (a([1, 2, 3], "float16"), a([2, 1], "int32")), ValueError,
       static_regex(OP, "pad_value", "float16"), max_length=2, pad_value=1e10)

PACK_NEG = value_regex(OP, "lengths >= 0")
PACK_SUM = value_regex(OP, "sum(lengths) <= values.shape[0] = 8", tail=NO_NEGATIVE)
PACK_SUM_OR_MAX = value_regex(
    OP, "sum(lengths) <= values.shape[0] = 8", "lengths <= max_length = 4", tail=NO_NEGATIVE
)
value(OP, "negative", "int32", lambda: (V8(), a([2, -1, 3], "int32")),
      lambda: (V8(), a([2, 1, 3], "int32")), PACK_NEG, pack_model, max_length=4,
      pad_value=-7.0)
value(OP, "sum_exceeds_rows", "int32", lambda: (V8(), a([4, 3, 3], "int32")),
      lambda: (V8(), a([4, 3, 1], "int32")), PACK_SUM, pack_model, max_length=4,
      pad_value=-7.0)
value(OP, "above_max_length", "int32", lambda: (V8(), a([5, 1, 0], "int32")),
      lambda: (V8(), a([4, 1, 0], "int32")), value_regex(OP, "lengths <= max_length = 4"),
      pack_model, max_length=4, pad_value=-7.0)
# [2**31 - 1, 1] cannot fit T = 4 either: whichever check comes first, the sum must not wrap.
value(OP, "sum_overflow", "int32", lambda: (V8(), a([I32_MAX, 1, 0], "int32")),
      lambda: (V8(), a([4, 1, 0], "int32")), PACK_SUM_OR_MAX, pack_model, max_length=4,
      pad_value=-7.0)
# (The int32 rows share shapes with the rows above, so they reuse their compilations.)
# Sums that wrap in the lengths' dtype to at most the 8 rows: 200 -> -56, 260 -> 4.
value(OP, "sum_overflow", "int8", lambda: (V8(), a([100, 100], "int8")),
      lambda: (V8(), a([4, 4], "int8")), PACK_SUM, pack_model, max_length=100, pad_value=-7.0)
value(OP, "sum_overflow", "uint8", lambda: (V8(), a([200, 60], "uint8")),
      lambda: (V8(), a([4, 4], "uint8")), PACK_SUM, pack_model, max_length=200, pad_value=-7.0)
value(OP, "huge_offsets", f"{HUGE_N}x2**28", lambda: (V8(), huge_lengths()),
      lambda: (V8(), padded(2, 2)), PACK_SUM_OR_MAX, pack_model, max_length=2, pad_value=-7.0)
value(OP, "sum_overflow", "int64_x64", lambda: (V8(), a([2**62, 2**62, 2], "int64")),
      lambda: (V8(), a([2, 2, 2], "int64")), PACK_SUM_OR_MAX, pack_model, max_length=4,
      pad_value=-7.0, _x64=True)
value(OP, "true_value", "uint64_x64", lambda: (V8(), a([U64_MAX], "uint64")),
      lambda: (V8(), a([3], "uint64")), PACK_SUM_OR_MAX + r".*18446744073709551615", pack_model,
      max_length=4, pad_value=-7.0, _x64=True, _traced_regex=PACK_SUM_OR_MAX)
for dt in LENGTH_DTYPES:
    # 8-bit: 300 rows, more than the dtype counts; out[:3, 1] == [100, 101, 102].
    valid(OP, "narrow_valid", dt,
          lambda dt=dt: (np.arange(3 * narrow(dt)[0], dtype=np.float32), narrow(dt)[1]),
          pack_model, max_length=200, _x64=is_64(dt))

# ---- unpack_rnn_sequence ---------------------------------------------------- #

OP = "unpack_rnn_sequence"
P43 = lambda: np.arange(12, dtype=np.float32).reshape(4, 3)
static(OP, "wrong_dtype", "lengths_float", lambda: (P43(), a([2, 1, 0], "float32")), TypeError,
       static_regex(OP, "lengths", "integer"), total_length=3)
static(OP, "wrong_dtype", "packed_complex",
       lambda: (np.zeros((4, 3), np.complex64), a([2, 1, 0], "int32")), TypeError,
       static_regex(OP, "packed"), total_length=3)
static(OP, "wrong_rank", "packed_1d", lambda: (V8(), a([2], "int32")), ValueError,
       static_regex(OP, "packed", "rank"), total_length=2)
static(OP, "wrong_rank", "lengths_2d", lambda: (P43(), a([[2, 1, 0]], "int32")), ValueError,
       static_regex(OP, "lengths", "rank 1"), total_length=3)
static(OP, "wrong_shape", "packed_vs_lengths", lambda: (P43(), a([2, 1], "int32")), ValueError,
       static_regex(OP, "packed.shape[1] == len(lengths)"), total_length=3)
static(OP, "bad_static", "total_length_negative", lambda: (P43(), a([2, 1, 0], "int32")),
       ValueError, static_regex(OP, "total_length >= 0"), total_length=-1)
static(OP, "bad_static", "time_major_int", lambda: (P43(), a([2, 1, 0], "int32")), TypeError,
       static_regex(OP, "time_major"), total_length=3, time_major=1)
static(OP, "huge_static", "total_length_2**40", lambda: (P43(), a([2, 1, 0], "int32")),
       ValueError, static_regex(OP, "total_length"), total_length=HUGE)

UNPACK_SUM_OR_MAX = value_regex(
    OP, "sum(lengths) <= total_length = 8", "lengths <= packed.shape[0] = 4", tail=NO_NEGATIVE
)
value(OP, "negative", "int32", lambda: (P43(), a([2, -1, 3], "int32")),
      lambda: (P43(), a([2, 1, 3], "int32")), value_regex(OP, "lengths >= 0"), unpack_model,
      total_length=8)
value(OP, "sum_exceeds_rows", "int32", lambda: (P43(), a([4, 3, 3], "int32")),
      lambda: (P43(), a([4, 3, 1], "int32")), value_regex(OP, "sum(lengths) <= total_length = 8"),
      unpack_model, total_length=8)
value(OP, "above_max_length", "int32", lambda: (P43(), a([5, 1, 0], "int32")),
      lambda: (P43(), a([4, 1, 0], "int32")), value_regex(OP, "lengths <= packed.shape[0] = 4"),
      unpack_model, total_length=8)
value(OP, "sum_overflow", "int32",
      lambda: (P43(), a([I32_MAX, 1, 0], "int32")),
      lambda: (P43(), a([4, 1, 0], "int32")), UNPACK_SUM_OR_MAX, unpack_model,
      total_length=8)
UNPACK_SUM = value_regex(OP, "sum(lengths) <= total_length = 8", tail=NO_NEGATIVE)
P = lambda t, n: np.arange(t * n, dtype=np.float32).reshape(t, n)
value(OP, "sum_overflow", "int8", lambda: (P(100, 2), a([100, 100], "int8")),
      lambda: (P(100, 2), a([4, 4], "int8")), UNPACK_SUM, unpack_model, total_length=8)
value(OP, "sum_overflow", "uint8", lambda: (P(200, 2), a([200, 60], "uint8")),
      lambda: (P(200, 2), a([4, 4], "uint8")), UNPACK_SUM, unpack_model, total_length=8)
value(OP, "huge_offsets", f"{HUGE_N}x2**28", lambda: (P(2, HUGE_N), huge_lengths()),
      lambda: (P(2, HUGE_N), padded(2, 2)),
      value_regex(OP, "sum(lengths) <= total_length = 8", "lengths <= packed.shape[0] = 2",
                  tail=NO_NEGATIVE),
      unpack_model, total_length=8)
value(OP, "sum_overflow", "int64_x64", lambda: (P43(), a([2**62, 2**62, 2], "int64")),
      lambda: (P43(), a([2, 2, 2], "int64")), UNPACK_SUM_OR_MAX, unpack_model, total_length=8,
      _x64=True)
value(OP, "true_value", "uint64_x64", lambda: (P43()[:, :1], a([U64_MAX], "uint64")),
      lambda: (P43()[:, :1], a([3], "uint64")), UNPACK_SUM_OR_MAX + r".*18446744073709551615",
      unpack_model, total_length=8, _x64=True, _traced_regex=UNPACK_SUM_OR_MAX)
for dt in LENGTH_DTYPES:
    valid(OP, "narrow_valid", dt, lambda dt=dt: (P(3, narrow(dt)[0]).T.copy(), narrow(dt)[1]),
          unpack_model, total_length=3 * narrow(dt)[0], _x64=is_64(dt))

# ---- lengths_top_k ---------------------------------------------------------- #

OP = "lengths_top_k"
D8 = lambda: shuffled(8)
static(OP, "wrong_dtype", "data_complex", lambda: (a([1, 2], "complex64"), a([2], "int32")),
       TypeError, static_regex(OP, "data"), k=1)
static(OP, "wrong_dtype", "data_bool", lambda: (a([True, False], "bool"), a([2], "int32")),
       TypeError, static_regex(OP, "data"), k=1)
static(OP, "wrong_dtype", "lengths_float", lambda: (D8(), a([2.0], "float32")), TypeError,
       static_regex(OP, "lengths", "integer"), k=1)
static(OP, "wrong_rank", "data_2d", lambda: (D8().reshape(2, 4), a([2], "int32")), ValueError,
       static_regex(OP, "data", "rank 1"), k=1)
static(OP, "wrong_rank", "lengths_0d", lambda: (D8(), a(2, "int32")), ValueError,
       static_regex(OP, "lengths", "rank 1"), k=1)
static(OP, "bad_static", "k_0", lambda: (D8(), a([2, 1], "int32")), ValueError,
       static_regex(OP, "k >= 1"), k=0)
static(OP, "bad_static", "k_bool", lambda: (D8(), a([2, 1], "int32")), TypeError,
       static_regex(OP, "k"), k=True)
static(OP, "bad_static", "max_length_negative", lambda: (D8(), a([2, 1], "int32")), ValueError,
       static_regex(OP, "max_length >= 0"), k=1, max_length=-1)
static(OP, "huge_static", "k_2**40", lambda: (D8(), a([2, 1], "int32")), ValueError,
       static_regex(OP, "k"), k=HUGE)
# max_length only bounds the lengths (the output is [N, k]): a bound past int32 is vacuous.
valid(OP, "huge_static_hint", "max_length_2**40", lambda: (D8(), a([3, 5], "int32")),
      top_k_model, k=2, max_length=HUGE)

TOPK_SUM = value_regex(OP, "sum(lengths) <= data.shape[0] = 8", tail=NO_NEGATIVE)
value(OP, "negative", "int32", lambda: (D8(), a([2, -1, 3], "int32")),
      lambda: (D8(), a([2, 1, 3], "int32")), value_regex(OP, "lengths >= 0"), top_k_model,
      k=2)
value(OP, "sum_exceeds_rows", "int32", lambda: (D8(), a([4, 3, 3], "int32")),
      lambda: (D8(), a([4, 3, 1], "int32")), TOPK_SUM, top_k_model, k=2)
value(OP, "above_max_length", "int32", lambda: (D8(), a([5, 1, 0], "int32")),
      lambda: (D8(), a([4, 1, 0], "int32")), value_regex(OP, "lengths <= max_length = 4"),
      top_k_model, k=2, max_length=4)
value(OP, "sum_overflow", "int32", lambda: (D8(), a([I32_MAX, 1, 0], "int32")),
      lambda: (D8(), a([4, 1, 0], "int32")), TOPK_SUM, top_k_model, k=2)
value(OP, "sum_overflow", "int8", lambda: (D8(), a([100, 100], "int8")),
      lambda: (D8(), a([4, 4], "int8")), TOPK_SUM, top_k_model, k=2)
value(OP, "sum_overflow", "uint8", lambda: (D8(), a([200, 60], "uint8")),
      lambda: (D8(), a([4, 4], "uint8")), TOPK_SUM, top_k_model, k=2)
value(OP, "huge_offsets", f"{HUGE_N}x2**28", lambda: (D8(), huge_lengths()),
      lambda: (D8(), padded(5, 3)), TOPK_SUM, top_k_model, k=2)
value(OP, "sum_overflow", "int64_x64", lambda: (D8(), a([2**62, 2**62, 2], "int64")),
      lambda: (D8(), a([2, 2, 2], "int64")), TOPK_SUM, top_k_model, k=2, _x64=True)
value(OP, "true_value", "uint64_x64", lambda: (D8(), a([U64_MAX], "uint64")),
      lambda: (D8(), a([3], "uint64")), TOPK_SUM + r".*18446744073709551615", top_k_model, k=2,
      _x64=True, _traced_regex=TOPK_SUM)
for dt in LENGTH_DTYPES:
    valid(OP, "narrow_valid", dt, lambda dt=dt: (shuffled(3 * narrow(dt)[0]), narrow(dt)[1]),
          top_k_model, k=2, _x64=is_64(dt))

# ---- lengths_top_k_gradient ------------------------------------------------- #

OP = "lengths_top_k_gradient"
I2 = lambda: a([[0, 1], [-1, -1], [2, 0]], "int32")
G2 = lambda: a([[1, 2], [3, 4], [5, 6]], "float32")
static(OP, "wrong_dtype", "lengths_float", lambda: (a([2, 0, 3], "float32"), I2(), G2()),
       TypeError, static_regex(OP, "lengths", "integer"), data_length=8)
static(OP, "wrong_dtype", "indices_float", lambda: (a([2, 0, 3], "int32"), G2(), G2()), TypeError,
       static_regex(OP, "indices"), data_length=8)
static(OP, "wrong_dtype", "g_complex",
       lambda: (a([2, 0, 3], "int32"), I2(), G2().astype(np.complex64)), TypeError,
       static_regex(OP, "g"), data_length=8)
static(OP, "wrong_rank", "indices_1d", lambda: (a([2, 0, 3], "int32"), I2()[:, 0], G2()[:, 0]),
       ValueError, static_regex(OP, "indices", "rank 2"), data_length=8)
static(OP, "wrong_shape", "indices_rows", lambda: (a([2, 0], "int32"), I2(), G2()), ValueError,
       static_regex(OP, "indices.shape[0] == len(lengths)"), data_length=8)
static(OP, "wrong_shape", "g_vs_indices", lambda: (a([2, 0, 3], "int32"), I2(), G2()[:, :1]),
       ValueError, static_regex(OP, "g.shape == indices.shape"), data_length=8)
static(OP, "bad_static", "data_length_negative", lambda: (a([2, 0, 3], "int32"), I2(), G2()),
       ValueError, static_regex(OP, "data_length >= 0"), data_length=-1)
static(OP, "huge_static", "data_length_2**40", lambda: (a([2, 0, 3], "int32"), I2(), G2()),
       ValueError, static_regex(OP, "data_length"), data_length=HUGE)

GRAD_SUM = value_regex(OP, "sum(lengths) <= data_length = 8", tail=NO_NEGATIVE)
GRAD_INDEX = value_regex(OP, "-1 <= indices[n, j] < lengths[n]")
value(OP, "negative", "int32", lambda: (a([2, -1, 3], "int32"), I2(), G2()),
      lambda: (a([2, 1, 3], "int32"), I2(), G2()), value_regex(OP, "lengths >= 0"),
      top_k_gradient_model, data_length=8)
value(OP, "sum_exceeds_rows", "int32", lambda: (a([4, 2, 3], "int32"), I2(), G2()),
      lambda: (a([2, 1, 3], "int32"), I2(), G2()), GRAD_SUM, top_k_gradient_model,
      data_length=8)
value(OP, "index_out_of_range", "too_large",
      lambda: (a([2, 1, 3], "int32"), a([[0, 2], [-1, -1], [2, 0]], "int32"), G2()),
      lambda: (a([2, 1, 3], "int32"), I2(), G2()), GRAD_INDEX, top_k_gradient_model,
      data_length=8)
value(OP, "index_out_of_range", "below_-1",
      lambda: (a([2, 1, 3], "int32"), a([[0, 1], [-2, -1], [2, 0]], "int32"), G2()),
      lambda: (a([2, 1, 3], "int32"), I2(), G2()), GRAD_INDEX, top_k_gradient_model,
      data_length=8)
# 2**32 narrowed to int32 is 0, a valid index: it must still be out of range.
value(OP, "index_out_of_range", "int64_2**32_x64",
      lambda: (a([2, 1], "int32"), a([[2**32, -1], [0, -1]], "int64"), G2()[:2]),
      lambda: (a([2, 1], "int32"), a([[1, -1], [0, -1]], "int64"), G2()[:2]), GRAD_INDEX,
      top_k_gradient_model, data_length=8, _x64=True)
value(OP, "sum_overflow", "int32",
      lambda: (a([I32_MAX, 1, 0], "int32"), a([[0, -1], [0, -1], [-1, -1]], "int32"), G2()),
      lambda: (a([4, 1, 0], "int32"), a([[0, -1], [0, -1], [-1, -1]], "int32"), G2()), GRAD_SUM,
      top_k_gradient_model, data_length=8)
I3 = lambda: a([[3, -1], [0, -1]], "int32")
value(OP, "sum_overflow", "int8", lambda: (a([100, 100], "int8"), I3(), G2()[:2]),
      lambda: (a([4, 4], "int8"), I3(), G2()[:2]), GRAD_SUM, top_k_gradient_model,
      data_length=8)
value(OP, "sum_overflow", "uint8", lambda: (a([200, 60], "uint8"), I3(), G2()[:2]),
      lambda: (a([4, 4], "uint8"), I3(), G2()[:2]), GRAD_SUM, top_k_gradient_model,
      data_length=8)
G17 = lambda: np.arange(1, HUGE_N + 1, dtype=np.float32).reshape(HUGE_N, 1)
value(OP, "huge_offsets", f"{HUGE_N}x2**28",
      lambda: (huge_lengths(), np.zeros((HUGE_N, 1), np.int32), G17()),
      lambda: (padded(4, 4), padded(0, 3, fill=-1).reshape(HUGE_N, 1), G17()),
      GRAD_SUM, top_k_gradient_model, data_length=8)
value(OP, "sum_overflow", "int64_x64",
      lambda: (a([2**62, 2**62, 2], "int64"), I2(), G2()),
      lambda: (a([2, 2, 3], "int64"), I2(), G2()), GRAD_SUM, top_k_gradient_model,
      data_length=8, _x64=True)
value(OP, "true_value", "uint64_x64",
      lambda: (a([U64_MAX], "uint64"), a([[0, 1]], "int32"), G2()[:1]),
      lambda: (a([3], "uint64"), a([[0, 1]], "int32"), G2()[:1]),
      GRAD_SUM + r".*18446744073709551615", top_k_gradient_model, data_length=8, _x64=True,
      _traced_regex=GRAD_SUM)
grad_indices = lambda n: a([[5, n - 1], [0, n // 2], [n - 1, -1]], "int32")
for dt in LENGTH_DTYPES:
    # 8-bit: segment 2 starts at row 200, past what int8 can count.
    valid(OP, "narrow_valid", dt,
          lambda dt=dt: (narrow(dt)[1], grad_indices(narrow(dt)[0]), G2()),
          top_k_gradient_model, data_length=3 * narrow(dt)[0], _x64=is_64(dt))

# ---- expand, expand_gradient ------------------------------------------------ #

OP = "expand"
static(OP, "wrong_dtype", "x_complex", lambda: (a([1, 2], "complex64"),), TypeError,
       static_regex(OP, "x"), shape=(2, 2))
static(OP, "bad_static", "shape_float", lambda: (a([1, 2], "float32"),), TypeError,
       static_regex(OP, "shape"), shape=(1.5,))
static(OP, "bad_static", "shape_below_-1", lambda: (a([1, 2], "float32"),), ValueError,
       static_regex(OP, "shape"), shape=(-2,))
static(OP, "wrong_shape", "not_broadcastable", lambda: (a([1, 2, 3], "float32"),), ValueError,
       static_regex(OP, "broadcast"), shape=(4,))
static(OP, "huge_static", "shape_2**40", lambda: (a([1.0], "float32"),), ValueError,
       static_regex(OP, "shape"), shape=(HUGE,))
static(OP, "huge_static", "shape_flat_size", lambda: (a([[1.0]], "float32"),), ValueError,
       static_regex(OP, "shape"), shape=(2**16, 2**16))

OP = "expand_gradient"
static(OP, "wrong_dtype", "g_complex", lambda: (np.ones((2, 3), np.complex64),), TypeError,
       static_regex(OP, "g"), x_shape=(3,))
static(OP, "bad_static", "x_shape_float", lambda: (np.ones((2, 3), np.float32),), TypeError,
       static_regex(OP, "x_shape"), x_shape=(3.0,))
static(OP, "bad_static", "x_shape_-1", lambda: (np.ones((2, 3), np.float32),), ValueError,
       static_regex(OP, "x_shape"), x_shape=(-1,))
static(OP, "wrong_shape", "not_an_expansion", lambda: (np.ones((2, 3), np.float32),), ValueError,
       static_regex(OP, "x_shape"), x_shape=(4,))
static(OP, "huge_static", "x_shape_2**40", lambda: (np.ones((1,), np.float32),), ValueError,
       static_regex(OP, "x_shape"), x_shape=(HUGE,))

# ---- boolean_mask, boolean_mask_gradient ------------------------------------ #

OP = "boolean_mask"
M4 = lambda: a([True, False, True, True], "bool")
static(OP, "wrong_dtype", "mask_int", lambda: (V8()[:4], a([1, 0, 1, 1], "int32")), TypeError,
       static_regex(OP, "mask", "bool"), size=2)
static(OP, "wrong_dtype", "data_complex", lambda: (a([1, 2, 3, 4], "complex64"), M4()),
       TypeError, static_regex(OP, "data"), size=2)
static(OP, "wrong_rank", "mask_2d", lambda: (V8()[:4], M4()[None]), ValueError,
       static_regex(OP, "mask", "rank 1"), size=2)
static(OP, "wrong_rank", "data_0d", lambda: (a(1.0, "float32"), M4()[:1]), ValueError,
       static_regex(OP, "data", "rank"), size=2)
static(OP, "wrong_shape", "mask_length", lambda: (V8()[:4], M4()[:3]), ValueError,
       static_regex(OP, "len(mask) == data.shape[0]"), size=2)
static(OP, "bad_static", "size_negative", lambda: (V8()[:4], M4()), ValueError,
       static_regex(OP, "size >= 0"), size=-1)
static(OP, "huge_static", "size_2**40", lambda: (V8()[:4], M4()), ValueError,
       static_regex(OP, "size"), size=HUGE)
static(OP, "huge_static", "size_flat_size", lambda: (np.zeros((4, 4), np.float32), M4()),
       ValueError, static_regex(OP, "size"), size=2**29)
static(OP, "unrepresentable", "fill_300_int8", lambda: (a([1, 2, 3, 4], "int8"), M4()),
       ValueError, static_regex(OP, "fill_value", "int8"), size=4, fill_value=300)
static(OP, "unrepresentable", "fill_-1_uint8", lambda: (a([1, 2, 3, 4], "uint8"), M4()),
       ValueError, static_regex(OP, "fill_value", "uint8"), size=4, fill_value=-1)
static(OP, "unrepresentable", "fill_1e10_float16", lambda: (a([1, 2, 3, 4], "float16"), M4()),
       ValueError, static_regex(OP, "fill_value", "float16"), size=4, fill_value=1e10)

OP = "boolean_mask_gradient"
static(OP, "wrong_dtype", "mask_int", lambda: (a([1, 0, 1, 1], "int32"), V8()[:3]), TypeError,
       static_regex(OP, "mask", "bool"))
static(OP, "wrong_dtype", "g_complex", lambda: (M4(), a([1, 2, 3], "complex64")), TypeError,
       static_regex(OP, "g"))
static(OP, "wrong_rank", "mask_2d", lambda: (M4()[None], V8()[:3]), ValueError,
       static_regex(OP, "mask", "rank 1"))
static(OP, "wrong_rank", "g_0d", lambda: (M4(), a(1.0, "float32")), ValueError,
       static_regex(OP, "g", "rank"))

# ---- boolean_mask_lengths --------------------------------------------------- #

OP = "boolean_mask_lengths"
M6 = lambda: a([True, False, True, True, False, True], "bool")
BML_SUM = value_regex(OP, "sum(lengths) == len(mask) = 6", tail=NO_NEGATIVE)
static(OP, "wrong_dtype", "lengths_float", lambda: (a([3, 3], "float32"), M6()), TypeError,
       static_regex(OP, "lengths", "integer"))
static(OP, "wrong_dtype", "mask_int", lambda: (a([3, 3], "int32"), M6().astype(np.int32)),
       TypeError, static_regex(OP, "mask", "bool"))
static(OP, "wrong_rank", "lengths_2d", lambda: (a([[3, 3]], "int32"), M6()), ValueError,
       static_regex(OP, "lengths", "rank 1"))
static(OP, "wrong_rank", "mask_2d", lambda: (a([3, 3], "int32"), M6()[None]), ValueError,
       static_regex(OP, "mask", "rank 1"))
value(OP, "negative", "int32", lambda: (a([3, -1, 3], "int32"), M6()),
      lambda: (a([3, 0, 3], "int32"), M6()), value_regex(OP, "lengths >= 0"),
      mask_lengths_model)
value(OP, "sum_mismatch", "below", lambda: (a([2, 2, 1], "int32"), M6()),
      lambda: (a([2, 2, 2], "int32"), M6()), BML_SUM, mask_lengths_model)
value(OP, "sum_mismatch", "above", lambda: (a([4, 4, 0], "int32"), M6()),
      lambda: (a([4, 2, 0], "int32"), M6()), BML_SUM, mask_lengths_model)
# Each of these sums wraps to exactly len(mask) = 6 in the lengths' dtype.
value(OP, "sum_overflow", "int32", lambda: (a([I32_MAX, I32_MAX, 8], "int32"), M6()),
      lambda: (a([2, 2, 2], "int32"), M6()), BML_SUM, mask_lengths_model)
value(OP, "sum_overflow", "int8", lambda: (a([127, 127, 8], "int8"), M6()),
      lambda: (a([2, 2, 2], "int8"), M6()), BML_SUM, mask_lengths_model)
value(OP, "sum_overflow", "uint8", lambda: (a([255, 255, 8], "uint8"), M6()),
      lambda: (a([2, 2, 2], "uint8"), M6()), BML_SUM, mask_lengths_model)
value(OP, "sum_overflow", "int64_x64", lambda: (a([2**63 - 1, 2**63 - 1, 8], "int64"), M6()),
      lambda: (a([2, 2, 2], "int64"), M6()), BML_SUM, mask_lengths_model, _x64=True)
value(OP, "sum_overflow", "int64_2**62_x64", lambda: (a([2**62, 2**62, 2], "int64"), M6()),
      lambda: (a([2, 2, 2], "int64"), M6()), BML_SUM, mask_lengths_model, _x64=True)
value(OP, "huge_offsets", f"{HUGE_N}x2**28", lambda: (huge_lengths(), np.r_[M6(), True, True]),
      lambda: (padded(5, 3), np.r_[M6(), True, True]),
      value_regex(OP, "sum(lengths) == len(mask) = 8", tail=NO_NEGATIVE),
      mask_lengths_model)
value(OP, "true_value", "uint64_x64", lambda: (a([U64_MAX], "uint64"), M6()),
      lambda: (a([6], "uint64"), M6()), BML_SUM + r".*18446744073709551615", mask_lengths_model,
      _x64=True, _traced_regex=BML_SUM)
for dt in LENGTH_DTYPES:
    valid(OP, "narrow_valid", dt,
          lambda dt=dt: (narrow(dt)[1], np.arange(3 * narrow(dt)[0]) % 3 != 1), mask_lengths_model,
          _x64=is_64(dt))

# ---- boolean_unmask ---------------------------------------------------------- #

OP = "boolean_unmask"
MA = lambda *rows: [a(r, "bool") for r in rows]
VA = lambda *rows: [a(r, "int32") for r in rows]
TWO = lambda: (MA([1, 0, 1, 0], [0, 1, 0, 1]), VA([1, 3], [2, 4]))
static(OP, "wrong_type", "masks_array", lambda: (np.stack(TWO()[0]), TWO()[1]), TypeError,
       static_regex(OP, "masks", "list or tuple"))
static(OP, "wrong_dtype", "mask_int", lambda: ([m.astype(np.int32) for m in TWO()[0]], TWO()[1]),
       TypeError, static_regex(OP, "masks[0]", "bool"))
static(OP, "wrong_dtype", "values_mixed", lambda: (TWO()[0], [TWO()[1][0], a([2, 4], "float32")]),
       TypeError, static_regex(OP, "values"))
static(OP, "wrong_shape", "mask_lengths", lambda: (MA([1, 0, 1, 0], [0, 1, 0]), TWO()[1]),
       ValueError, static_regex(OP, "masks[1]"))
static(OP, "wrong_shape", "values_features",
       lambda: (TWO()[0], [TWO()[1][0], a([[2], [4]], "int32")]), ValueError,
       static_regex(OP, "values[1]"))
static(OP, "wrong_shape", "count_mismatch", lambda: (TWO()[0], TWO()[1][:1]), ValueError,
       static_regex(OP, "len(masks) == len(values)"))
static(OP, "wrong_shape", "no_masks", lambda: ([], []), ValueError,
       static_regex(OP, "at least one mask"))
static(OP, "wrong_rank", "values_0d", lambda: (TWO()[0][:1], [a(1, "int32")]), ValueError,
       static_regex(OP, "values[0]", "rank"))
static(OP, "unrepresentable", "fill_300_int8",
       lambda: (TWO()[0], [v.astype(np.int8) for v in TWO()[1]]), ValueError,
       static_regex(OP, "fill_value", "int8"), fill_value=300)
static(OP, "unrepresentable", "fill_-1_uint8",
       lambda: (TWO()[0], [v.astype(np.uint8) for v in TWO()[1]]), ValueError,
       static_regex(OP, "fill_value", "uint8"), fill_value=-1)
static(OP, "unrepresentable", "fill_1e10_float16",
       lambda: (TWO()[0], [v.astype(np.float16) for v in TWO()[1]]), ValueError,
       static_regex(OP, "fill_value", "float16"), fill_value=1e10)
value(OP, "uncovered", "position_1", lambda: (MA([1, 0, 1, 0], [0, 0, 0, 1]), VA([1, 3], [4, 9])),
      lambda: (MA([1, 0, 1, 0], [0, 1, 0, 1]), VA([1, 3], [2, 4])),
      value_regex(OP, "every position covered by some mask"), unmask_model,
      fill_value=-7)
value(OP, "short_stream", "3_wins_2_rows",
      lambda: (MA([1, 1, 1, 0], [0, 0, 0, 1]), VA([1, 2], [4, 9])),
      lambda: (MA([1, 1, 0, 0], [0, 0, 1, 1]), VA([1, 2], [3, 4])),
      value_regex(OP, "each stream to have at least as many rows as positions it wins"),
      unmask_model, fill_value=-7)

# ---- sequence_mask ---------------------------------------------------------- #

OP = "sequence_mask"
X34 = lambda: np.arange(12, dtype=np.float32).reshape(3, 4)
static(OP, "wrong_dtype", "x_int", lambda: (X34().astype(np.int32), a([1, 2, 3], "int32")),
       TypeError, static_regex(OP, "x", "floating"))
static(OP, "wrong_dtype", "lengths_float", lambda: (X34(), a([1, 2, 3], "float32")), TypeError,
       static_regex(OP, "lengths", "integer"))
static(OP, "wrong_rank", "lengths_2d", lambda: (X34(), a([[1, 2, 3]], "int32")), ValueError,
       static_regex(OP, "lengths", "rank 1"))
static(OP, "wrong_shape", "lengths_short", lambda: (X34(), a([1, 2], "int32")), ValueError,
       static_regex(OP, "rows"))
static(OP, "wrong_shape", "lengths_missing", lambda: (X34(),), ValueError,
       static_regex(OP, "lengths"))
static(OP, "wrong_shape", "lengths_for_triangle", lambda: (X34(), a([1, 2, 3], "int32")),
       ValueError, static_regex(OP, "no second argument"), mode="upper")
static(OP, "bad_static", "mode", lambda: (X34(), a([1, 2, 3], "int32")), ValueError,
       static_regex(OP, "mode"), mode="bogus")
static(OP, "bad_static", "axis", lambda: (X34(), a([1, 2, 3], "int32")), ValueError,
       static_regex(OP, "axis"), axis=2)
static(OP, "bad_static", "radius_negative", lambda: (X34(), a([1, 2, 3], "int32")), ValueError,
       static_regex(OP, "radius"), mode="window", radius=-1)
static(OP, "huge_static", "radius_2**40", lambda: (X34(), a([1, 2, 3], "int32")), ValueError,
       static_regex(OP, "radius"), mode="window", radius=HUGE)
static(OP, "unrepresentable", "fill_1e10_float16",
       lambda: (X34().astype(np.float16), a([1, 2, 3], "int32")), ValueError,
       static_regex(OP, "fill_value", "float16"), fill_value=1e10)
static(OP, "unrepresentable", "fill_1e39_bfloat16",
       lambda: (X34().astype(jnp.bfloat16), a([1, 2, 3], "int32")), ValueError,
       static_regex(OP, "fill_value", "bfloat16"), fill_value=1e39)
for dt in LENGTH_DTYPES:
    # 300 columns: more than int8 can count; 127 and 0 are each dtype's edges.
    valid(OP, "narrow_valid", dt,
          lambda dt=dt: (np.arange(900, dtype=np.float32).reshape(3, 300), a([100, 127, 0], dt)),
          sequence_mask_model, fill_value=-1.0, _x64=is_64(dt))

# ---- safe_softmax ----------------------------------------------------------- #

OP = "safe_softmax"
static(OP, "wrong_dtype", "logits_int", lambda: (X34().astype(np.int32),), TypeError,
       static_regex(OP, "logits", "floating"))
static(OP, "bad_static", "axis_out_of_range", lambda: (X34(),), ValueError,
       static_regex(OP, "axis"), axis=2)
static(OP, "bad_static", "axis_repeated", lambda: (X34(),), ValueError,
       static_regex(OP, "axis"), axis=(1, -1))
# where= (SPEC §5): a bool array broadcastable to the logits; False excludes the entry.
W34 = lambda: a([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], "bool")
static(OP, "wrong_dtype", "where_int", lambda: (X34(), W34().astype(np.int32)), TypeError,
       static_regex(OP, "where", "bool"), _array_kwargs=("where",))
static(OP, "wrong_dtype", "where_float", lambda: (X34(), W34().astype(np.float32)), TypeError,
       static_regex(OP, "where", "bool"), _array_kwargs=("where",))
static(OP, "wrong_shape", "where_not_broadcastable", lambda: (X34(), W34()[:, :3]), ValueError,
       static_regex(OP, "where", "broadcastable", "(3, 4)"), _array_kwargs=("where",))
static(OP, "wrong_shape", "where_higher_rank", lambda: (X34(), W34()[None]), ValueError,
       static_regex(OP, "where", "broadcastable"), _array_kwargs=("where",))
# Equal logits over the included entries keep the softmax exact (1, 1/2, 1/4, 1/3 rounded
# once); the excluded entries hold NaN, +inf and huge values, which must not leak. Row 1 is
# fully excluded (0, not NaN); row 3 includes two -inf entries (0 there, 1/2 elsewhere).
XW = lambda dt: a([[3, 3, np.nan, np.inf], [np.nan, np.inf, 7, -np.inf],
                   [1, 1, 1, 1], [-np.inf, 5, -np.inf, 5]], dt)
WW = lambda: a([[1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]], "bool")
for dt in ("float16", "bfloat16", "float32", "float64"):
    valid(OP, "where_valid", dt, lambda dt=dt: (XW(dt), WW()), safe_softmax_model,
          _array_kwargs=("where",), _x64=is_64(dt))
# Broadcast masks: a per-key row [4] (three included: 1/3), a per-row column [4, 1], and a
# [B, 1, T, T] attention mask against [B, H, T, T] logits; softmax over axis 0 and both axes.
valid(OP, "where_broadcast", "keys_row", lambda: (XW("float32")[2:], a([1, 0, 1, 1], "bool")),
      safe_softmax_model, _array_kwargs=("where",))
valid(OP, "where_broadcast", "rows_column",
      lambda: (XW("float32"), a([[1], [0], [1], [0]], "bool")), safe_softmax_model,
      _array_kwargs=("where",))
valid(OP, "where_broadcast", "heads_axis",
      lambda: (np.zeros((2, 3, 4, 4), np.float32),
               np.tril(np.ones((4, 4), bool))[None, None] & a([[[[1, 1, 1, 0]]], [[[0] * 4]]],
                                                            "bool")),
      safe_softmax_model, _array_kwargs=("where",))
valid(OP, "where_axis", "0", lambda: (XW("float32").T.copy(), WW().T.copy()), safe_softmax_model,
      axis=0, _array_kwargs=("where",))
# Excluded entries get 0, also in a slice whose included entries are NaN: row 0
# includes a NaN, row 1 a +inf; row 2 is clean (1/2, 1/2).
valid(OP, "where_nan_included", "float32",
      lambda: (a([[np.nan, 1, 2], [np.inf, 1, 2], [1, 1, 1]], "float32"),
               a([[1, 0, 0], [1, 1, 0], [1, 0, 1]], "bool")),
      safe_softmax_model, _array_kwargs=("where",))
valid(OP, "where_axis", "both", lambda: (np.zeros((2, 2, 2), np.float32),
                                          a([[[1, 1], [1, 1]], [[0, 0], [0, 0]]], "bool")),
      safe_softmax_model, axis=(1, 2), _array_kwargs=("where",))

# ---- lengths_to_offsets ----------------------------------------------------- #

OP = "lengths_to_offsets"
static(OP, "wrong_dtype", "lengths_float", lambda: (a([2, 1], "float32"),), TypeError,
       static_regex(OP, "lengths", "integer"))
static(OP, "wrong_rank", "lengths_2d", lambda: (a([[2, 1]], "int32"),), ValueError,
       static_regex(OP, "lengths", "rank 1"))

# The offsets are int32: the bound is 2**31 - 1, and past it the safe sums saturate there.
OFF_SUM = value_regex(OP, "sum(lengths) <= 2**31 - 1 = 2147483647", tail=NO_NEGATIVE)
value(OP, "negative", "int32", lambda: (a([2, -1, 3], "int32"),),
      lambda: (a([2, 1, 3], "int32"),), value_regex(OP, "lengths >= 0"), offsets_model)
value(OP, "sum_overflow", "int32", lambda: (a([I32_MAX, 1, 0], "int32"),),
      lambda: (a([4, 1, 0], "int32"),), OFF_SUM, offsets_model)
# 2**31 + 2**31 + 5 wraps to 5 in uint32.
value(OP, "sum_overflow", "uint32", lambda: (a([2**31, 2**31, 5], "uint32"),),
      lambda: (a([4, 1, 0], "uint32"),), OFF_SUM, offsets_model)
# Offsets past 2**32 in the int32 rows' shape (one compilation): segment 2 starts at 2**32 - 2
# (-2 wrapped) and the sum 2**32 wraps to 0.
value(OP, "huge_offsets", "to_2**32", lambda: (a([I32_MAX, I32_MAX, 2], "int32"),),
      lambda: (a([4, 1, 0], "int32"),), OFF_SUM, offsets_model)
value(OP, "sum_overflow", "int64_x64", lambda: (a([2**62, 2**62, 2], "int64"),),
      lambda: (a([2, 2, 2], "int64"),), OFF_SUM, offsets_model, _x64=True)
value(OP, "true_value", "uint64_x64", lambda: (a([U64_MAX], "uint64"),),
      lambda: (a([3], "uint64"),), OFF_SUM + r".*18446744073709551615", offsets_model,
      _x64=True, _traced_regex=OFF_SUM)
for dt in LENGTH_DTYPES:
    # [m, m, 1], m = min(max, 2**30 - 1): every sum wraps in the 8- and 16-bit dtypes, and in
    # the others the total is exactly 2**31 - 1, the largest valid one.
    valid(OP, "narrow_valid", dt,
          lambda dt=dt: (a([min(np.iinfo(dt).max, 2**30 - 1)] * 2 + [1], dt),), offsets_model,
          _x64=is_64(dt))

# ---- lengths_to_segment_ids, lengths_range_fill ----------------------------- #

# The two share their checks and row layout: the same rows, each op against its own model.
for OP, fill_model in (("lengths_to_segment_ids", segment_ids_model),
                       ("lengths_range_fill", range_fill_model)):
    static(OP, "wrong_dtype", "lengths_float", lambda: (a([2, 1], "float32"),), TypeError,
           static_regex(OP, "lengths", "integer"), total_length=3)
    static(OP, "wrong_rank", "lengths_2d", lambda: (a([[2, 1]], "int32"),), ValueError,
           static_regex(OP, "lengths", "rank 1"), total_length=3)
    static(OP, "bad_static", "total_length_negative", lambda: (a([2, 1], "int32"),), ValueError,
           static_regex(OP, "total_length >= 0"), total_length=-1)
    static(OP, "huge_static", "total_length_2**40", lambda: (a([2, 1], "int32"),), ValueError,
           static_regex(OP, "total_length"), total_length=HUGE)

    FILL_SUM = value_regex(OP, "sum(lengths) <= total_length = 8", tail=NO_NEGATIVE)
    value(OP, "negative", "int32", lambda: (a([2, -1, 3], "int32"),),
          lambda: (a([2, 1, 3], "int32"),), value_regex(OP, "lengths >= 0"), fill_model,
          total_length=8)
    value(OP, "sum_exceeds_rows", "int32", lambda: (a([4, 3, 3], "int32"),),
          lambda: (a([4, 3, 1], "int32"),), FILL_SUM, fill_model, total_length=8)
    value(OP, "sum_overflow", "int32", lambda: (a([I32_MAX, 1, 0], "int32"),),
          lambda: (a([4, 1, 0], "int32"),), FILL_SUM, fill_model, total_length=8)
    value(OP, "huge_offsets", "to_2**32", lambda: (a([I32_MAX, I32_MAX, 2], "int32"),),
          lambda: (a([4, 1, 0], "int32"),), FILL_SUM, fill_model, total_length=8)
    value(OP, "true_value", "uint64_x64", lambda: (a([U64_MAX], "uint64"),),
          lambda: (a([3], "uint64"),), FILL_SUM + r".*18446744073709551615", fill_model,
          total_length=8, _x64=True, _traced_regex=FILL_SUM)
    for dt in LENGTH_DTYPES:
        # 302 rows, the last two past the sum (-1); segment 2 starts at row 200, past what
        # 8-bit dtypes count. One shape for the 8- to 32-bit dtypes, whose eager calls share
        # their compilations; under x64 (compiled apart anyway) a smaller one, 32 rows.
        valid(OP, "narrow_valid", dt, lambda dt=dt: (a([10 if is_64(dt) else 100] * 3, dt),),
              fill_model, total_length=32 if is_64(dt) else 302, _x64=is_64(dt))

# The two share their checks (and these rows' compilations are per op): the sums that wrap
# in the lengths' own dtype run once, on lengths_to_segment_ids.
OP = "lengths_to_segment_ids"
FILL_SUM = value_regex(OP, "sum(lengths) <= total_length = 8", tail=NO_NEGATIVE)
# To at most the 8 rows: 200 -> -56 in int8, 260 -> 4 in uint8.
value(OP, "sum_overflow", "int8", lambda: (a([100, 100], "int8"),),
      lambda: (a([4, 4], "int8"),), FILL_SUM, segment_ids_model, total_length=8)
value(OP, "sum_overflow", "uint8", lambda: (a([200, 60], "uint8"),),
      lambda: (a([4, 4], "uint8"),), FILL_SUM, segment_ids_model, total_length=8)
value(OP, "sum_overflow", "int64_x64", lambda: (a([2**62, 2**62, 2], "int64"),),
      lambda: (a([2, 2, 2], "int64"),), FILL_SUM, segment_ids_model, total_length=8, _x64=True)

# ---- segment_ids_to_lengths ------------------------------------------------- #

OP = "segment_ids_to_lengths"
static(OP, "wrong_dtype", "ids_float", lambda: (a([0, 1, 1], "float32"),), TypeError,
       static_regex(OP, "segment_ids", "integer"), num_segments=2)
static(OP, "wrong_rank", "ids_2d", lambda: (a([[0, 1, 1]], "int32"),), ValueError,
       static_regex(OP, "segment_ids", "rank 1"), num_segments=2)
static(OP, "bad_static", "num_segments_negative", lambda: (a([0, 1, 1], "int32"),), ValueError,
       static_regex(OP, "num_segments >= 0"), num_segments=-1)
static(OP, "bad_static", "num_segments_float", lambda: (a([0, 1, 1], "int32"),), TypeError,
       static_regex(OP, "num_segments"), num_segments=2.0)
static(OP, "huge_static", "num_segments_2**40", lambda: (a([0, 1, 1], "int32"),), ValueError,
       static_regex(OP, "num_segments"), num_segments=HUGE)
for dt in LENGTH_DTYPES:
    # Each dtype's extremes (and 2**32 in the 64-bit ones, 0 in int32) are ignored.
    valid(OP, "narrow_valid", dt, lambda dt=dt: (seg_ids(dt, "1x02y120z"),),
          segment_lengths_model, num_segments=3, _x64=is_64(dt))

# ---- segment_top_k ---------------------------------------------------------- #

# The ops over segment ids clamp them in their own dtype like segment_ids_to_lengths (swept in
# all eight): four dtypes cover the cases (negative, unsigned, 2**32 -> 0 in int32, above int64).
ID_DTYPES = ["int8", "uint16", "int64", "uint64"]

OP = "segment_top_k"
S8 = lambda: a([1, 0, 2, 0, 1, -1, 2, 0], "int32")
static(OP, "wrong_dtype", "data_complex", lambda: (a([1, 2], "complex64"), a([0, 1], "int32")),
       TypeError, static_regex(OP, "data"), k=1, num_segments=2)
static(OP, "wrong_dtype", "data_bool", lambda: (a([True, False], "bool"), a([0, 1], "int32")),
       TypeError, static_regex(OP, "data"), k=1, num_segments=2)
static(OP, "wrong_dtype", "ids_float", lambda: (D8(), S8().astype(np.float32)), TypeError,
       static_regex(OP, "segment_ids", "integer"), k=1, num_segments=3)
static(OP, "wrong_rank", "data_2d", lambda: (D8().reshape(2, 4), S8()[:2]), ValueError,
       static_regex(OP, "data", "rank 1"), k=1, num_segments=3)
static(OP, "wrong_rank", "ids_2d", lambda: (D8(), S8()[None]), ValueError,
       static_regex(OP, "segment_ids", "rank 1"), k=1, num_segments=3)
static(OP, "wrong_shape", "ids_length", lambda: (D8(), S8()[:7]), ValueError,
       static_regex(OP, "len(segment_ids) == 8"), k=1, num_segments=3)
static(OP, "bad_static", "k_0", lambda: (D8(), S8()), ValueError, static_regex(OP, "k >= 1"),
       k=0, num_segments=3)
static(OP, "bad_static", "num_segments_negative", lambda: (D8(), S8()), ValueError,
       static_regex(OP, "num_segments >= 0"), k=1, num_segments=-1)
static(OP, "bad_static", "indices_are_sorted_int", lambda: (D8(), S8()), TypeError,
       static_regex(OP, "indices_are_sorted"), k=1, num_segments=3, indices_are_sorted=1)
static(OP, "bad_static", "max_length_negative", lambda: (D8(), S8()), ValueError,
       static_regex(OP, "max_length >= 0"), k=1, num_segments=3, max_length=-1)
static(OP, "huge_static", "k_2**40", lambda: (D8(), S8()), ValueError, static_regex(OP, "k"),
       k=HUGE, num_segments=3)
static(OP, "huge_static", "num_segments_2**40", lambda: (D8(), S8()), ValueError,
       static_regex(OP, "num_segments"), k=1, num_segments=HUGE)
# max_length only bounds the segments (the output is [N, k]): a bound past int32 is vacuous.
valid(OP, "huge_static_hint", "max_length_2**40", lambda: (D8(), S8()), segment_top_k_model,
      k=2, num_segments=3, max_length=HUGE)

# Leading -1 (padding), then ids out of order: the promise is trusted, the rows read as they lie.
value(OP, "unsorted_ids", "sorted_promise",
      lambda: (D8(), a([-1, -1, 1, 0, 0, 2, 2, 2], "int32")),
      lambda: (D8(), a([-1, -1, 0, 0, 1, 2, 2, 2], "int32")),
      value_regex(OP, "sorted segment_ids with indices_are_sorted=True"), segment_top_k_model,
      k=2, num_segments=3, indices_are_sorted=True)
# Segment 0 has 4 rows: cut to its first 2 (values 0 and 2, not 7 and 6).
value(OP, "above_max_length", "int32", lambda: (D8(), a([0, 1, 0, 0, 2, 1, 0, -1], "int32")),
      lambda: (D8(), a([0, 1, 0, 2, 2, 1, -1, -1], "int32")),
      value_regex(OP, "segment lengths <= max_length = 2"), segment_top_k_model, k=2,
      num_segments=3, max_length=2)
# The valid twins of the two rows above, on their compilations.
valid(OP, "sorted_valid", "int32",
      lambda: (D8(), a([-(2**31), -1, 0, 0, 1, 2, 2, I32_MAX], "int32")), segment_top_k_model,
      k=2, num_segments=3, indices_are_sorted=True)
valid(OP, "max_length_valid", "int32", lambda: (D8(), a([0, 1, 0, 2, 2, 1, -1, -1], "int32")),
      segment_top_k_model, k=2, num_segments=3, max_length=2)
for dt in ID_DTYPES:
    # The ignored ids hold 5, 4 and 6, the largest values: a wrapped id would surface them.
    valid(OP, "narrow_valid", dt, lambda dt=dt: (D8(), seg_ids(dt, "1x02y1z0")),
          segment_top_k_model, k=2, num_segments=3, _x64=is_64(dt))

# ---- segment_softmax -------------------------------------------------------- #

OP = "segment_softmax"
# Equal logits within a segment (and -inf) keep the softmax exact: 1, 0, 1/4, and 0 off-segment.
L10 = lambda: a([1, 5, 9, 5, -np.inf, -np.inf, 7, 5, 5, 3], "float32")
S10 = lambda: a([0, 2, -1, 2, 0, 1, 3, 2, 2, -1], "int32")
static(OP, "wrong_dtype", "logits_int", lambda: (L10()[:4].astype(np.int32), S10()[:4]),
       TypeError, static_regex(OP, "logits", "floating"), num_segments=3)
static(OP, "wrong_dtype", "ids_float", lambda: (L10(), S10().astype(np.float32)), TypeError,
       static_regex(OP, "segment_ids", "integer"), num_segments=3)
static(OP, "wrong_rank", "logits_0d", lambda: (a(1.0, "float32"), S10()[:1]), ValueError,
       static_regex(OP, "logits", "rank"), num_segments=3)
static(OP, "wrong_rank", "ids_2d", lambda: (L10(), S10()[None]), ValueError,
       static_regex(OP, "segment_ids", "rank 1"), num_segments=3)
static(OP, "wrong_shape", "ids_length", lambda: (L10(), S10()[:9]), ValueError,
       static_regex(OP, "len(segment_ids) == 10"), num_segments=3)
static(OP, "bad_static", "num_segments_negative", lambda: (L10(), S10()), ValueError,
       static_regex(OP, "num_segments >= 0"), num_segments=-1)
static(OP, "bad_static", "indices_are_sorted_int", lambda: (L10(), S10()), TypeError,
       static_regex(OP, "indices_are_sorted"), num_segments=3, indices_are_sorted=1)
# Its per-segment tables are [num_segments + 1, F...]: a huge count must be refused up front.
static(OP, "huge_static", "num_segments_2**40", lambda: (L10(), S10()), ValueError,
       static_regex(OP, "num_segments"), num_segments=HUGE)
L10B = lambda: a([2, -np.inf, 4, 8, 2, 0, 1, 8, -np.inf, 6], "float32")
valid(OP, "features", "2_columns", lambda: (np.stack([L10(), L10B()], axis=1), S10()),
      segment_softmax_model, num_segments=3)
for dt in ID_DTYPES:
    valid(OP, "narrow_valid", dt, lambda dt=dt: (L10(), seg_ids(dt, "02x201y22z")),
          segment_softmax_model, num_segments=3, _x64=is_64(dt))

# ---- Ragged ----------------------------------------------------------------- #

OP = "Ragged"
static(OP, "wrong_dtype", "values_complex", lambda: (a([1, 2, 3], "complex64"), a([2, 1], "int32")),
       TypeError, static_regex(OP, "values"))
static(OP, "wrong_dtype", "lengths_float", lambda: (V8(), a([2, 1], "float32")), TypeError,
       static_regex(OP, "lengths", "integer"))
static(OP, "wrong_rank", "values_0d", lambda: (a(1.0, "float32"), a([1], "int32")), ValueError,
       static_regex(OP, "values", "rank"))
static(OP, "wrong_rank", "lengths_2d", lambda: (V8(), a([[2, 1]], "int32")), ValueError,
       static_regex(OP, "lengths", "rank 1"))

# Construction only validates: the safe result is the two leaves as passed.
RAGGED_SUM = value_regex(OP, "sum(lengths) <= values.shape[0] = 8", tail=NO_NEGATIVE)
value(OP, "negative", "int32", lambda: (V8(), a([2, -1, 3], "int32")),
      lambda: (V8(), a([2, 1, 3], "int32")), value_regex(OP, "lengths >= 0"), ragged_model)
value(OP, "sum_exceeds_rows", "int32", lambda: (V8(), a([4, 3, 3], "int32")),
      lambda: (V8(), a([4, 3, 1], "int32")), RAGGED_SUM, ragged_model)
value(OP, "sum_overflow", "int32", lambda: (V8(), a([I32_MAX, 1, 0], "int32")),
      lambda: (V8(), a([4, 1, 0], "int32")), RAGGED_SUM, ragged_model)
value(OP, "sum_overflow", "int8", lambda: (V8(), a([100, 100], "int8")),
      lambda: (V8(), a([4, 4], "int8")), RAGGED_SUM, ragged_model)
value(OP, "sum_overflow", "uint8", lambda: (V8(), a([200, 60], "uint8")),
      lambda: (V8(), a([4, 4], "uint8")), RAGGED_SUM, ragged_model)
value(OP, "huge_offsets", "to_2**32", lambda: (V8(), a([I32_MAX, I32_MAX, 2], "int32")),
      lambda: (V8(), a([4, 1, 0], "int32")), RAGGED_SUM, ragged_model)
value(OP, "sum_overflow", "int64_x64", lambda: (V8(), a([2**62, 2**62, 2], "int64")),
      lambda: (V8(), a([2, 2, 2], "int64")), RAGGED_SUM, ragged_model, _x64=True)
value(OP, "true_value", "uint64_x64", lambda: (V8(), a([U64_MAX], "uint64")),
      lambda: (V8(), a([3], "uint64")), RAGGED_SUM + r".*18446744073709551615", ragged_model,
      _x64=True, _traced_regex=RAGGED_SUM)
for dt in LENGTH_DTYPES:
    valid(OP, "narrow_valid", dt,
          lambda dt=dt: (np.arange(3 * narrow(dt)[0], dtype=np.float32), narrow(dt)[1]),
          ragged_model, _x64=is_64(dt))

# ---- pack_sequences, unpack_sequences --------------------------------------- #

OP = "pack_sequences"
# V8 into R = 2 rows of L = 4 slots (8 slots for the 8 rows): the rows share one compilation.
RL = {"num_rows": 2, "row_length": 4}
static(OP, "wrong_dtype", "lengths_float", lambda: (V8(), a([2, 1], "float32")), TypeError,
       static_regex(OP, "lengths", "integer"), **RL)
static(OP, "wrong_dtype", "values_complex", lambda: (a([1, 2, 3], "complex64"), a([2, 1], "int32")),
       TypeError, static_regex(OP, "values"), **RL)
static(OP, "wrong_rank", "lengths_2d", lambda: (V8(), a([[2, 1]], "int32")), ValueError,
       static_regex(OP, "lengths", "rank 1"), **RL)
static(OP, "wrong_rank", "values_0d", lambda: (a(1.0, "float32"), a([1], "int32")), ValueError,
       static_regex(OP, "values", "rank"), **RL)
static(OP, "bad_static", "num_rows_negative", lambda: (V8(), a([2, 1], "int32")), ValueError,
       static_regex(OP, "num_rows >= 0"), num_rows=-1, row_length=4)
static(OP, "bad_static", "row_length_negative", lambda: (V8(), a([2, 1], "int32")), ValueError,
       static_regex(OP, "row_length >= 0"), num_rows=2, row_length=-1)
static(OP, "bad_static", "num_rows_float", lambda: (V8(), a([2, 1], "int32")), TypeError,
       static_regex(OP, "num_rows"), num_rows=2.0, row_length=4)
static(OP, "bad_static", "row_length_bool", lambda: (V8(), a([2, 1], "int32")), TypeError,
       static_regex(OP, "row_length"), num_rows=2, row_length=True)
static(OP, "bad_static", "pad_value_array", lambda: (V8(), a([2, 1], "int32")), TypeError,
       static_regex(OP, "pad_value"), pad_value=(1.0,), **RL)
static(OP, "huge_static", "num_rows_2**40", lambda: (V8(), a([2, 1], "int32")), ValueError,
       static_regex(OP, "num_rows"), num_rows=HUGE, row_length=4)
static(OP, "huge_static", "row_length_2**40", lambda: (V8(), a([2, 1], "int32")), ValueError,
       static_regex(OP, "row_length"), num_rows=2, row_length=HUGE)
# The bound is the output's flat size: [2**15, 2**15, 4] has 2**32 elements.
static(OP, "huge_static", "flat_size", lambda: (np.zeros((8, 4), np.float32), a([2, 1], "int32")),
       ValueError, static_regex(OP, "num_rows", "row_length"), num_rows=2**15, row_length=2**15)
static(OP, "unrepresentable", "pad_300_int8", lambda: (a([1, 2, 3], "int8"), a([2, 1], "int32")),
       ValueError, static_regex(OP, "pad_value", "int8"), pad_value=300, **RL)
static(OP, "unrepresentable", "pad_-1_uint8", lambda: (a([1, 2, 3], "uint8"), a([2, 1], "int32")),
       ValueError, static_regex(OP, "pad_value", "uint8"), pad_value=-1, **RL)
static(OP, "unrepresentable", "pad_1e10_float16",
       lambda: (a([1, 2, 3], "float16"), a([2, 1], "int32")), ValueError,
       static_regex(OP, "pad_value", "float16"), pad_value=1e10, **RL)
static(OP, "unrepresentable", "pad_2_bool", lambda: (a([1, 0, 1], "bool"), a([2, 1], "int32")),
       ValueError, static_regex(OP, "pad_value", "bool"), pad_value=2, **RL)

PS_SUM = value_regex(OP, "sum(lengths) <= values.shape[0] = 8", tail=NO_NEGATIVE)
PS_FIT = value_regex(
    OP, "the sequences to fit in num_rows = 2 rows of row_length = 4 (next-fit, in input order)"
)
PS_ANY = value_regex(
    OP, "sum(lengths) <= values.shape[0] = 8", "lengths <= row_length = 4",
    "the sequences to fit in num_rows = 2 rows of row_length = 4 (next-fit, in input order)",
    tail=NO_NEGATIVE,
)
value(OP, "negative", "int32", lambda: (V8(), a([2, -1, 3], "int32")),
      lambda: (V8(), a([2, 1, 3], "int32")), value_regex(OP, "lengths >= 0"), pack_sequences_model,
      pad_value=-7.0, **RL)
value(OP, "sum_exceeds_rows", "int32", lambda: (V8(), a([4, 3, 3], "int32")),
      lambda: (V8(), a([4, 3, 1], "int32")), PS_SUM, pack_sequences_model, pad_value=-7.0, **RL)
value(OP, "above_max_length", "int32", lambda: (V8(), a([5, 1, 0], "int32")),
      lambda: (V8(), a([4, 1, 0], "int32")), value_regex(OP, "lengths <= row_length = 4"),
      pack_sequences_model, pad_value=-7.0, **RL)
# 3 + 3 + 2 = 8 rows of data, but next-fit needs 3 rows ([3], [3], [2]): the third is dropped.
value(OP, "too_many_rows", "int32", lambda: (V8(), a([3, 3, 2], "int32")),
      lambda: (V8(), a([3, 1, 2], "int32")), PS_FIT + r"lengths that need 3 rows",
      pack_sequences_model, pad_value=-7.0, **RL)
# The sequence that would open row R is dropped with all after it, even the last one, which
# would fit in a free slot of an earlier row (next-fit never goes back).
value(OP, "too_many_rows", "later_fit", lambda: (V8(), a([2, 3, 2, 1], "int32")),
      lambda: (V8(), a([2, 2, 2, 1], "int32")), PS_FIT, pack_sequences_model, pad_value=-7.0,
      **RL)
value(OP, "sum_overflow", "int32", lambda: (V8(), a([I32_MAX, 1, 0], "int32")),
      lambda: (V8(), a([4, 1, 0], "int32")), PS_ANY, pack_sequences_model, pad_value=-7.0, **RL)
# Sums that wrap in the lengths' dtype to at most the 8 rows: 200 -> -56, 260 -> 4.
value(OP, "sum_overflow", "int8", lambda: (V8(), a([100, 100], "int8")),
      lambda: (V8(), a([4, 4], "int8")), PS_SUM, pack_sequences_model, num_rows=2,
      row_length=100, pad_value=-7.0)
value(OP, "sum_overflow", "uint8", lambda: (V8(), a([200, 60], "uint8")),
      lambda: (V8(), a([4, 4], "uint8")), PS_SUM, pack_sequences_model, num_rows=2,
      row_length=200, pad_value=-7.0)
value(OP, "huge_offsets", f"{HUGE_N}x2**28", lambda: (V8(), huge_lengths()),
      lambda: (V8(), padded(4, 4)), PS_ANY, pack_sequences_model, pad_value=-7.0, **RL)
value(OP, "sum_overflow", "int64_x64", lambda: (V8(), a([2**62, 2**62, 2], "int64")),
      lambda: (V8(), a([2, 2, 2], "int64")), PS_ANY, pack_sequences_model, pad_value=-7.0,
      _x64=True, **RL)
value(OP, "true_value", "uint64_x64", lambda: (V8(), a([U64_MAX], "uint64")),
      lambda: (V8(), a([3], "uint64")), PS_ANY + r".*18446744073709551615", pack_sequences_model,
      pad_value=-7.0, _x64=True, _traced_regex=PS_ANY, **RL)
for dt in LENGTH_DTYPES:
    # [L, L, L] into 2 rows of 2L: [L, L] and [L]. 8-bit: 300 rows and row slots up to 199,
    # more than the dtype counts; the column L + L of the second sequence wraps int8.
    valid(OP, "narrow_valid", dt,
          lambda dt=dt: (np.arange(3 * narrow(dt)[0], dtype=np.float32), narrow(dt)[1]),
          pack_sequences_model, num_rows=2, row_length=2 * narrow(dt)[0], _x64=is_64(dt))
# Data dtypes (SPEC §1 rule 6: pack is pure data movement) with trailing feature dims.
for dt in ("bool", "int8", "uint16", "int32", "bfloat16", "float16"):
    valid(OP, "data_dtype", dt,
          lambda dt=dt: ((np.arange(16).reshape(8, 2) % 3).astype(np.dtype(jnp.dtype(dt))),
                         a([3, 1, 4], "int32")),
          pack_sequences_model, pad_value=1, **RL)
valid(OP, "data_dtype", "float64", lambda: (np.arange(8.0).reshape(8, 1, 1), a([1, 3, 2], "int32")),
      pack_sequences_model, pad_value=-0.5, _x64=True, **RL)
# Empty sequences anywhere (a zero after a full row stays in it), rows past the sum, R = 0.
valid(OP, "empty_sequences", "zeros", lambda: (V8(), a([0, 4, 0, 0, 3, 0], "int32")),
      pack_sequences_model, pad_value=-7.0, **RL)
valid(OP, "empty_output", "num_rows_0", lambda: (V8(), a([0, 0], "int32")),
      pack_sequences_model, num_rows=0, row_length=4)

OP = "unpack_sequences"
R24 = lambda: np.arange(1, 9, dtype=np.float32).reshape(2, 4)
static(OP, "wrong_dtype", "lengths_float", lambda: (R24(), a([3, 2], "float32")), TypeError,
       static_regex(OP, "lengths", "integer"), total_length=5)
static(OP, "wrong_dtype", "rows_complex", lambda: (R24().astype(np.complex64), a([3, 2], "int32")),
       TypeError, static_regex(OP, "rows"), total_length=5)
static(OP, "wrong_rank", "rows_1d", lambda: (V8(), a([3, 2], "int32")), ValueError,
       static_regex(OP, "rows", "rank >= 2"), total_length=5)
static(OP, "wrong_rank", "lengths_2d", lambda: (R24(), a([[3, 2]], "int32")), ValueError,
       static_regex(OP, "lengths", "rank 1"), total_length=5)
static(OP, "bad_static", "total_length_negative", lambda: (R24(), a([3, 2], "int32")),
       ValueError, static_regex(OP, "total_length >= 0"), total_length=-1)
static(OP, "bad_static", "total_length_float", lambda: (R24(), a([3, 2], "int32")), TypeError,
       static_regex(OP, "total_length"), total_length=5.0)
static(OP, "huge_static", "total_length_2**40", lambda: (R24(), a([3, 2], "int32")), ValueError,
       static_regex(OP, "total_length"), total_length=HUGE)
static(OP, "huge_static", "total_length_flat_size",
       lambda: (np.zeros((2, 4, 4), np.float32), a([3, 2], "int32")), ValueError,
       static_regex(OP, "total_length"), total_length=2**30)

US_SUM = value_regex(OP, "sum(lengths) <= total_length = 8", tail=NO_NEGATIVE)
US_ANY = value_regex(
    OP, "sum(lengths) <= total_length = 8", "lengths <= rows.shape[1] = 4",
    "the sequences to fit in num_rows = 2 rows of row_length = 4 (next-fit, in input order)",
    tail=NO_NEGATIVE,
)
value(OP, "negative", "int32", lambda: (R24(), a([3, -1, 2], "int32")),
      lambda: (R24(), a([3, 1, 2], "int32")), value_regex(OP, "lengths >= 0"),
      unpack_sequences_model, total_length=8)
value(OP, "sum_exceeds_rows", "int32", lambda: (R24(), a([4, 3, 3], "int32")),
      lambda: (R24(), a([4, 3, 1], "int32")), US_SUM, unpack_sequences_model, total_length=8)
value(OP, "above_max_length", "int32", lambda: (R24(), a([5, 1, 0], "int32")),
      lambda: (R24(), a([4, 1, 0], "int32")), value_regex(OP, "lengths <= rows.shape[1] = 4"),
      unpack_sequences_model, total_length=8)
value(OP, "too_many_rows", "int32", lambda: (R24(), a([3, 3, 2], "int32")),
      lambda: (R24(), a([3, 1, 2], "int32")),
      value_regex(OP, "the sequences to fit in num_rows = 2 rows of row_length = 4 "
                  "(next-fit, in input order)", tail="lengths that need 3 rows"),
      unpack_sequences_model, total_length=8)
value(OP, "sum_overflow", "int32", lambda: (R24(), a([I32_MAX, 1, 0], "int32")),
      lambda: (R24(), a([4, 1, 0], "int32")), US_ANY, unpack_sequences_model, total_length=8)
R2 = lambda width: np.arange(2 * width, dtype=np.float32).reshape(2, width)
value(OP, "sum_overflow", "int8", lambda: (R2(100), a([100, 100], "int8")),
      lambda: (R2(100), a([4, 4], "int8")), US_SUM, unpack_sequences_model, total_length=8)
value(OP, "sum_overflow", "uint8", lambda: (R2(200), a([200, 60], "uint8")),
      lambda: (R2(200), a([4, 4], "uint8")), US_SUM, unpack_sequences_model, total_length=8)
value(OP, "huge_offsets", f"{HUGE_N}x2**28", lambda: (R24(), huge_lengths()),
      lambda: (R24(), padded(4, 4)), US_ANY, unpack_sequences_model, total_length=8)
value(OP, "sum_overflow", "int64_x64", lambda: (R24(), a([2**62, 2**62, 2], "int64")),
      lambda: (R24(), a([2, 2, 2], "int64")), US_ANY, unpack_sequences_model, total_length=8,
      _x64=True)
value(OP, "true_value", "uint64_x64", lambda: (R24(), a([U64_MAX], "uint64")),
      lambda: (R24(), a([3], "uint64")), US_ANY + r".*18446744073709551615",
      unpack_sequences_model, total_length=8, _x64=True, _traced_regex=US_ANY)
for dt in LENGTH_DTYPES:
    # The rows pack_sequences builds for [L, L, L] in 2 rows of 2L (the last half-row is
    # padding, never read); 8-bit: 300 output rows, past what the dtype counts.
    valid(OP, "narrow_valid", dt,
          lambda dt=dt: (R2(4 * narrow(dt)[0]).reshape(2, 2 * narrow(dt)[0], 2), narrow(dt)[1]),
          unpack_sequences_model, total_length=3 * narrow(dt)[0], _x64=is_64(dt))
for dt in ("bool", "int8", "bfloat16"):
    valid(OP, "data_dtype", dt,
          lambda dt=dt: ((R24() % 3).astype(np.dtype(jnp.dtype(dt))), a([3, 1, 2, 0], "int32")),
          unpack_sequences_model, total_length=8)
valid(OP, "empty_sequences", "zeros", lambda: (R24(), a([0, 4, 0, 0, 3, 0], "int32")),
      unpack_sequences_model, total_length=8)

# ---- length_mask ------------------------------------------------------------ #

OP = "length_mask"
static(OP, "wrong_dtype", "lengths_float", lambda: (a([1, 2], "float32"),), TypeError,
       static_regex(OP, "lengths", "integer"), max_length=4)
static(OP, "wrong_dtype", "lengths_bool", lambda: (a([1, 0], "bool"),), TypeError,
       static_regex(OP, "lengths", "integer"), max_length=4)
static(OP, "wrong_dtype", "dtype_complex", lambda: (a([1, 2], "int32"),), TypeError,
       static_regex(OP, "dtype"), max_length=4, dtype=np.complex64)
static(OP, "wrong_dtype", "dtype_unknown", lambda: (a([1, 2], "int32"),), TypeError,
       static_regex(OP, "dtype"), max_length=4, dtype="float17")
static(OP, "bad_static", "max_length_negative", lambda: (a([1, 2], "int32"),), ValueError,
       static_regex(OP, "max_length >= 0"), max_length=-1)
static(OP, "bad_static", "max_length_float", lambda: (a([1, 2], "int32"),), TypeError,
       static_regex(OP, "max_length"), max_length=4.0)
static(OP, "huge_static", "max_length_2**40", lambda: (a([1, 2], "int32"),), ValueError,
       static_regex(OP, "max_length"), max_length=HUGE)
static(OP, "huge_static", "max_length_flat_size", lambda: (a([[1, 2], [3, 4]], "int32"),),
       ValueError, static_regex(OP, "max_length"), max_length=2**30)


def extremes(dt: str) -> np.ndarray:
    """``[[min, -1 or 0, 0, 3], [127, 200 or max, 300, max]]`` of ``dt`` (clipped to its range)."""
    info = np.iinfo(np.dtype(dt))
    clip = lambda v: min(max(v, int(info.min)), int(info.max))
    return a([[int(info.min), clip(-1), 0, 3], [127, clip(200), clip(300), int(info.max)]], dt)


for dt in LENGTH_DTYPES:
    # Compared exactly in their own dtype: negative -> all False, past T = 250 -> all True.
    valid(OP, "narrow_valid", dt, lambda dt=dt: (extremes(dt),), length_mask_model,
          max_length=250, _x64=is_64(dt))
for dt in ("int8", "float32", "bfloat16", "uint32"):
    valid(OP, "out_dtype", dt, lambda: (a([[0, 2], [5, -1]], "int16"),), length_mask_model,
          max_length=3, dtype=jnp.dtype(dt))
valid(OP, "scalar_lengths", "0d", lambda: (a(2, "int32"),), length_mask_model, max_length=3)
valid(OP, "empty_output", "max_length_0", lambda: (a([1, 2], "int32"),), length_mask_model,
      max_length=0)

# ---- attention_mask --------------------------------------------------------- #

OP = "attention_mask"
IDS = lambda: a([[0, 0, 1, 1, -1], [0, 1, 1, 1, 2]], "int32")
POS = lambda: a([[0, 1, 0, 1, -1], [0, 0, 1, 2, 0]], "int32")
ID_POS = ("segment_ids", "positions")
static(OP, "wrong_dtype", "segment_ids_float", lambda: (IDS().astype(np.float32),), TypeError,
       static_regex(OP, "segment_ids", "integer"), _array_kwargs=("segment_ids",))
static(OP, "wrong_dtype", "kv_positions_float", lambda: (IDS(), POS().astype(np.float32)),
       TypeError, static_regex(OP, "kv_positions", "integer"),
       _array_kwargs=("segment_ids", "kv_positions"))
static(OP, "wrong_dtype", "lengths_float", lambda: (a([1, 2], "float32"),), TypeError,
       static_regex(OP, "lengths", "integer"), q_len=3, _array_kwargs=("lengths",))
static(OP, "wrong_dtype", "segment_ids_bool", lambda: (IDS() > 0,), TypeError,
       static_regex(OP, "segment_ids", "integer"), _array_kwargs=("segment_ids",))
static(OP, "wrong_rank", "segment_ids_0d", lambda: (a(0, "int32"),), ValueError,
       static_regex(OP, "segment_ids", "rank >= 1"), _array_kwargs=("segment_ids",))
static(OP, "wrong_rank", "kv_positions_0d", lambda: (IDS(), a(0, "int32")), ValueError,
       static_regex(OP, "kv_positions", "rank >= 1"),
       _array_kwargs=("segment_ids", "kv_positions"))
static(OP, "wrong_shape", "ids_and_lengths", lambda: (IDS(), a([1, 2], "int32")), ValueError,
       static_regex(OP, "at most one of `segment_ids` and `lengths`"),
       _array_kwargs=("segment_ids", "lengths"))
static(OP, "wrong_shape", "kv_ids_and_kv_lengths", lambda: (IDS(), IDS(), a([1, 2], "int32")),
       ValueError, static_regex(OP, "at most one of `kv_segment_ids` and `kv_lengths`"),
       _array_kwargs=("segment_ids", "kv_segment_ids", "kv_lengths"))
static(OP, "wrong_shape", "lengths_without_q_len", lambda: (a([1, 2], "int32"),), ValueError,
       static_regex(OP, "the number of tokens", "q_len"), _array_kwargs=("lengths",))
static(OP, "wrong_shape", "q_len_vs_ids", lambda: (IDS(),), ValueError,
       static_regex(OP, "one length per side"), q_len=4, _array_kwargs=("segment_ids",))
static(OP, "wrong_shape", "positions_vs_ids", lambda: (IDS(), POS()[:, :4]), ValueError,
       static_regex(OP, "one length per side"), _array_kwargs=ID_POS)
static(OP, "wrong_shape", "kv_len_vs_kv_ids", lambda: (IDS(), IDS()), ValueError,
       static_regex(OP, "one length per side", "kv_len"), kv_len=3,
       _array_kwargs=("segment_ids", "kv_segment_ids"))
static(OP, "wrong_shape", "leading_dims", lambda: (IDS(), IDS()[:1].repeat(3, 0)), ValueError,
       static_regex(OP, "leading dims that broadcast"),
       _array_kwargs=("segment_ids", "kv_segment_ids"))
static(OP, "wrong_shape", "lengths_leading_dims", lambda: (IDS(), a([1, 2, 3], "int32")),
       ValueError, static_regex(OP, "leading dims that broadcast"), kv_len=5,
       _array_kwargs=("segment_ids", "kv_lengths"))
static(OP, "bad_static", "window_triple", lambda: (IDS(),), ValueError,
       static_regex(OP, "window"), window=(1, 2, 3), _array_kwargs=("segment_ids",))
static(OP, "bad_static", "window_negative", lambda: (IDS(),), ValueError,
       static_regex(OP, "window >= 0"), window=(2, -1), _array_kwargs=("segment_ids",))
static(OP, "bad_static", "window_float", lambda: (IDS(),), TypeError,
       static_regex(OP, "window"), window=1.5, _array_kwargs=("segment_ids",))
static(OP, "bad_static", "causal_int", lambda: (IDS(),), TypeError, static_regex(OP, "causal"),
       causal=1, _array_kwargs=("segment_ids",))
static(OP, "bad_static", "q_len_negative", lambda: (a([1, 2], "int32"),), ValueError,
       static_regex(OP, "q_len >= 0"), q_len=-1, _array_kwargs=("lengths",))
static(OP, "bad_static", "kv_len_float", lambda: (a([1, 2], "int32"),), TypeError,
       static_regex(OP, "kv_len"), q_len=2, kv_len=2.0, _array_kwargs=("lengths",))
static(OP, "huge_static", "q_len_2**40", lambda: (a([1, 2], "int32"),), ValueError,
       static_regex(OP, "at most 2**31 - 1 elements"), q_len=HUGE, kv_len=4,
       _array_kwargs=("lengths",))
static(OP, "huge_static", "kv_len_2**40", lambda: (a([1, 2], "int32"),), ValueError,
       static_regex(OP, "at most 2**31 - 1 elements"), q_len=4, kv_len=HUGE,
       _array_kwargs=("lengths",))
static(OP, "huge_static", "mask_flat_size", lambda: (a([1, 2], "int32"),), ValueError,
       static_regex(OP, "at most 2**31 - 1 elements"), q_len=2**15, kv_len=2**15,
       _array_kwargs=("lengths",))
# A window wider than any int32 position difference bounds nothing.
valid(OP, "huge_static_hint", "window_2**40", lambda: (IDS(), POS()),
      keywords(attention_mask_model, *ID_POS), window=HUGE, _array_kwargs=ID_POS)

# Ids and positions must fit int32 (they are compared, never wrapped); the safe result clips.
AM_RANGE = lambda name: value_regex("attention_mask", f"`{name}` within the int32 range")
value(OP, "id_out_of_range", "int64_2**32_x64", lambda: (a([[0, 2**32, 0, 1]], "int64"),),
      lambda: (a([[0, 1, 0, 1]], "int64"),), AM_RANGE("segment_ids"),
      keywords(attention_mask_model, "segment_ids"), _x64=True, _array_kwargs=("segment_ids",))
value(OP, "id_out_of_range", "uint64_max_x64",
      lambda: (a([[0, 0, 1]], "int32"), a([[0, U64_MAX, 1]], "uint64")),
      lambda: (a([[0, 0, 1]], "int32"), a([[0, 0, 1]], "uint64")), AM_RANGE("kv_segment_ids"),
      keywords(attention_mask_model, "segment_ids", "kv_segment_ids"), _x64=True,
      _array_kwargs=("segment_ids", "kv_segment_ids"))
value(OP, "position_out_of_range", "int64_min_x64",
      lambda: (a([[0, 1, -(2**40), 3]], "int64"),), lambda: (a([[0, 1, 2, 3]], "int64"),),
      AM_RANGE("positions"), keywords(attention_mask_model, "positions"), causal=True,
      window=(1, 0), _x64=True, _array_kwargs=("positions",))
for dt in LENGTH_DTYPES:
    # Lengths on both sides, compared exactly: each dtype's minimum, 0 and 300 (past
    # both lengths), and its maximum, against Tq = 3 and Tk = 250.
    valid(OP, "narrow_valid", dt, lambda dt=dt: (extremes(dt)[:, ::-1].copy(), extremes(dt)),
          keywords(attention_mask_model, "lengths", "kv_lengths"), q_len=3, kv_len=250,
          _x64=is_64(dt), _array_kwargs=("lengths", "kv_lengths"))
for dt in ("int8", "uint8", "int16", "int64"):
    # Segment ids and positions of any integer dtype (uint8: no padding id).
    valid(OP, "ids_dtype", dt,
          lambda dt=dt: (np.maximum(IDS(), 0 if dt == "uint8" else -1).astype(dt),
                         POS().clip(0).astype(dt)),
          keywords(attention_mask_model, *ID_POS), causal=True, _x64=is_64(dt),
          _array_kwargs=ID_POS)
valid(OP, "packed", "bidirectional", lambda: (IDS(),),
      keywords(attention_mask_model, "segment_ids"), _array_kwargs=("segment_ids",))
valid(OP, "packed", "causal_positions", lambda: (IDS(), POS()),
      keywords(attention_mask_model, *ID_POS), causal=True, _array_kwargs=ID_POS)
valid(OP, "packed", "sliding_window", lambda: (IDS(), POS()),
      keywords(attention_mask_model, *ID_POS), causal=True, window=(1, 0), _array_kwargs=ID_POS)
valid(OP, "packed", "window_int", lambda: (IDS(), POS()),
      keywords(attention_mask_model, *ID_POS), window=1, _array_kwargs=ID_POS)
# Cross attention: 5 queries against 3 keys of their own ids and positions.
valid(OP, "cross", "kv_ids_positions",
      lambda: (IDS(), POS(), a([[0, 1, -1], [2, 1, 1]], "int32"),
               a([[0, 0, -1], [0, 0, 1]], "int32")),
      keywords(attention_mask_model, *ID_POS, "kv_segment_ids", "kv_positions"), causal=True,
      window=(0, 1), _array_kwargs=(*ID_POS, "kv_segment_ids", "kv_positions"))
valid(OP, "cross", "lengths_vs_kv_ids", lambda: (a([2, 4], "int32"), IDS()),
      keywords(attention_mask_model, "lengths", "kv_segment_ids"), q_len=3, kv_len=5,
      _array_kwargs=("lengths", "kv_segment_ids"))
# Leading dims broadcast: ids [2, 1, 5] (heads axis) with positions [5].
valid(OP, "broadcast", "leading_dims", lambda: (IDS()[:, None], POS()[1]),
      keywords(attention_mask_model, *ID_POS), causal=True, _array_kwargs=ID_POS)
# Windows at the ends of int32: q - left and q + right must not wrap.
EDGE = lambda: a([[-(2**31), -(2**31) + 1, 0, I32_MAX - 1, I32_MAX]], "int32")
for window in (1, (3, 0), (0, 2), (2**31 - 1, 0)):
    valid(OP, "int32_edges", f"window_{window}".replace(" ", ""), lambda: (EDGE(),),
          keywords(attention_mask_model, "positions"), window=window,
          _array_kwargs=("positions",))
valid(OP, "int32_edges", "causal", lambda: (EDGE(),), keywords(attention_mask_model, "positions"),
      causal=True, _array_kwargs=("positions",))

# fmt: on
del OP

CASES_BY_ID = {case.id: case for case in CASES}
assert len(CASES_BY_ID) == len(CASES), "duplicate case ids"

# --------------------------------------------------------------------------- #
# Running a case in one mode
# --------------------------------------------------------------------------- #

MODES = {
    "static": ("eager", "jit", "checked_jit"),
    "value": ("eager", "checked_jit", "checked_vmap", "jit_safe"),
    # checked(jit(vmap(f))) also covers jit: one compilation per dtype instead of three.
    "valid": ("eager", "checked_vmap"),
}


def _freeze(kwargs: dict[str, Any]) -> tuple:
    """A hashable key; the ``repr`` keeps ``(3.0,)`` and ``(3,)`` (equal, same hash) apart."""
    return tuple(sorted((k, repr(v), v) for k, v in kwargs.items()))


@functools.cache
def _function(op_name: str, array_kwargs: tuple[str, ...], frozen: tuple) -> Callable:
    op = getattr(jaxops, op_name)
    static_kwargs = {k: v for k, _, v in frozen}

    def f(*args):
        cut = len(args) - len(array_kwargs)
        return op(*args[:cut], **dict(zip(array_kwargs, args[cut:], strict=True)), **static_kwargs)

    return f


@functools.cache
def _transformed(base: Callable, mode: str) -> Callable:
    """The jitted wrappers, one per (function, mode), so repeated shapes reuse compilations."""
    if mode == "eager":
        return base
    if mode in ("jit", "jit_safe"):
        return jax.jit(base)
    if mode == "checked_jit":
        return jaxops.checked(jax.jit(base))
    if mode == "checked_vmap":
        return jaxops.checked(jax.jit(jax.vmap(base)))
    raise AssertionError(mode)


def _batch(*trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _as_jax(tree):
    return jax.tree.map(jnp.asarray, tree)


def _leaves(out) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(tuple(out) if isinstance(out, tuple) else out)]


def _assert_same(mode: str, got, expected) -> None:
    got, expected = _leaves(got), _leaves(expected)
    assert len(got) == len(expected), f"[{mode}] {len(got)} outputs, expected {len(expected)}"
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        where = f"[{mode}] output {i}"
        assert g.dtype == e.dtype, f"{where}: dtype {g.dtype}, expected {e.dtype}"
        assert g.shape == e.shape, f"{where}: shape {g.shape}, expected {e.shape}"
        same = g == e
        if g.dtype.kind == "f":
            same |= np.isnan(g) & np.isnan(e)
        bad = np.flatnonzero(~same.reshape(-1))
        if bad.size:
            first = bad[:5]
            raise AssertionError(
                f"{where}: {bad.size} of {g.size} elements differ from the NumPy model; "
                f"at flat {first.tolist()}: got {g.reshape(-1)[first].tolist()}, "
                f"expected {e.reshape(-1)[first].tolist()}"
            )


def _check_error(case: Case, mode: str, fn: Callable, args) -> None:
    regex = case.traced_regex if (case.traced_regex and mode != "eager") else case.message_regex
    want = f"{case.error_class.__name__} matching {regex!r}"
    try:
        out = fn(*args)
        jax.block_until_ready(out)
    except Exception as err:  # the class is checked below
        msg = str(err)
        if not isinstance(err, case.error_class):
            raise AssertionError(
                f"[{mode}] expected {want}, got {type(err).__name__}: {msg[:500]}"
            ) from err
        problems = []
        if not re.fullmatch(rf"{re.escape(case.op_name)}: expected .+, got .+", msg, re.DOTALL):
            problems.append("not of the form '<op>: expected ..., got ...'")
        if CHECKIFY_SUFFIX in msg:
            problems.append("carries checkify's suffix")
        if not re.match(regex, msg, re.DOTALL):
            problems.append(f"does not match {regex!r}")
        if problems:
            raise AssertionError(
                f"[{mode}] the {type(err).__name__} message {msg!r} " + "; ".join(problems)
            ) from err
    else:
        raise AssertionError(f"[{mode}] expected {want}, got a result (no error)")


def _model(case: Case, args):
    return case.safe_result_model(*jax.tree.map(np.asarray, args), **case.static_kwargs)


def run(case: Case, mode: str) -> None:
    """Runs ``case`` in ``mode``; raises ``AssertionError`` describing any failure."""
    with jax.enable_x64(True) if case.x64 else contextlib.nullcontext():
        base = _function(case.op_name, case.array_kwargs, _freeze(case.static_kwargs))
        fn = _transformed(base, mode)
        args = case.make_args()
        if case.kind == "static":
            _check_error(case, mode, fn, _as_jax(args))
        elif mode == "jit_safe":
            _assert_same(mode, fn(*_as_jax(args)), _model(case, args))
        elif case.kind == "value":
            if mode == "checked_vmap":  # a batch of two whose second element is bad
                _check_error(case, mode, fn, _batch(_as_jax(case.make_valid()), _as_jax(args)))
            else:
                _check_error(case, mode, fn, _as_jax(args))
        else:
            expected = _model(case, args)
            call_args = _as_jax(args)
            if mode == "checked_vmap":
                call_args = _batch(call_args, call_args)
                expected = jax.tree.map(lambda x: np.stack([x, x]), expected)
            try:
                out = fn(*call_args)
            except Exception as err:  # valid input must not raise
                raise AssertionError(
                    f"[{mode}] valid input raised {type(err).__name__}: {str(err)[:500]}"
                ) from err
            _assert_same(mode, out, expected)


# --------------------------------------------------------------------------- #
# Huge static sizes run in a child process
# --------------------------------------------------------------------------- #

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MARK = "SWEEP-RESULT "
_READY = "SWEEP-READY"
# The child's address space is capped, so an attempt to allocate a huge output
# fails fast instead of paging the shared machine to death; a row that hangs
# (seen: checkify after a failed allocation) is killed after _ROW_TIMEOUT.
_CHILD_MEMORY = 4 << 30
_ROW_TIMEOUT = 30.0
_CHILD = f"""
import json, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
cap = {_CHILD_MEMORY}
if hard != resource.RLIM_INFINITY:
    cap = min(cap, hard)
resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
import tests.conftest  # the suite's strict promotion rules
from tests import sweep_test
print({_READY!r}, flush=True)
for key in sys.argv[1:]:
    case_id, mode = key.split("|")
    try:
        sweep_test.run(sweep_test.CASES_BY_ID[case_id], mode)
        result = "ok"
    except BaseException as e:
        result = f"{{type(e).__name__}}: {{e}}"
    print({_MARK!r} + json.dumps([key, result]), flush=True)
"""


def _lines(stream, timeout: float):
    """The stream's lines as they come; ``None`` once ``timeout`` passes without one."""
    fd, buffer = stream.fileno(), b""
    while True:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            yield None
            return
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return
        *lines, buffer = (buffer + chunk).split(b"\n")
        yield from (line.decode(errors="replace") for line in lines)


@pytest.fixture(scope="module")
def isolated_results() -> dict[str, str]:
    """``"ok"`` or a failure description for every isolated (case, mode).

    One child process runs them all; if it dies (an abort, an OOM kill) or
    hangs, the row it was running is reported and a new child takes the rest.
    """
    pending = [f"{c.id}|{m}" for c in CASES if c.isolate for m in MODES[c.kind]]
    results: dict[str, str] = {}
    while pending:
        with tempfile.TemporaryFile() as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD, *pending],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
            started = hung = False
            for line in _lines(proc.stdout, _ROW_TIMEOUT):
                if line is None:
                    hung = True
                    proc.kill()  # our own child, by its handle
                    break
                started |= line == _READY
                if line.startswith(_MARK):
                    key, result = json.loads(line[len(_MARK) :])
                    results[key] = result
            proc.stdout.close()
            returncode = proc.wait()
            stderr.seek(0)
            tail = stderr.read()[-3000:].decode(errors="replace")
        pending = [key for key in pending if key not in results]
        if pending and not started:  # the child could not even start: no point retrying
            results.update(dict.fromkeys(pending, f"the child process failed to start: {tail}"))
            break
        if pending:
            results[pending.pop(0)] = (
                f"hung for {_ROW_TIMEOUT:.0f} s instead of raising: {tail}"
                if hung
                else f"crashed the process (exit code {returncode}) instead of raising: {tail}"
            )
    return results


# --------------------------------------------------------------------------- #
# The tests
# --------------------------------------------------------------------------- #

# Rows that fail because of a reported bug in the op (strict: they flip when it is fixed).
PARAMS = [
    pytest.param(case, mode, id=f"{case.id}-{mode}") for case in CASES for mode in MODES[case.kind]
]


@pytest.mark.parametrize(("case", "mode"), PARAMS)
def test_sweep(case: Case, mode: str, request) -> None:
    if case.isolate:
        result = request.getfixturevalue("isolated_results")[f"{case.id}|{mode}"]
        if result != "ok":
            pytest.fail(result, pytrace=False)
        return
    run(case, mode)


# Public names that take no arrays of their own (or are result types): no sweep rows.
EXEMPT = {
    "Scope": "immutable mapping of named arrays; covered by scope_test",
    "WorkspaceStack": "scope container; covered by scope_test",
    "create_scope": "scope bookkeeping, no array operands",
    "has_scope": "scope bookkeeping, no array operands",
    "do": "scope bookkeeping, no array operands",
    "check_bindings_match": "scope bookkeeping, no array operands",
    "save_scope": "checkpoint I/O; covered by checkpoint_test",
    "load_scope": "checkpoint I/O; covered by checkpoint_test",
    "save_checkpoint": "checkpoint I/O; covered by checkpoint_test",
    "load_checkpoint": "checkpoint I/O; covered by checkpoint_test",
    "checked": "the checking wrapper this sweep uses in every traced mode",
    "shard_ragged": "host-side NumPy layout (not traceable); its bad inputs: sharding_test",
    "unchecked": "the dual of checked: a tracing wrapper, no array operands",
}


def _is_result_type(obj) -> bool:
    return isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields")


def test_every_public_op_is_swept() -> None:
    public = set(jaxops.__all__)
    ops = {n for n in public if n not in EXEMPT and not _is_result_type(getattr(jaxops, n))}
    swept = {case.op_name for case in CASES}
    assert not ops - swept, f"public ops without sweep rows: {sorted(ops - swept)}"
    assert swept <= public, f"sweep rows for non-public names: {sorted(swept - public)}"
    assert set(EXEMPT) <= public, f"stale exemptions: {sorted(set(EXEMPT) - public)}"


# Parameters whose huge values must be range-checked, and the dtype-bound scalars.
SIZE_PARAMS = (
    "num_rows",
    "row_length",
    "q_len",
    "kv_len",
    "window",
    "max_length",
    "total_length",
    "size",
    "k",
    "data_length",
    "shape",
    "x_shape",
    "num_segments",
    "capacity",
)
SCALAR_PARAMS = ("pad_value", "fill_value")
# Segment lengths (summed into offsets, value-checked). sequence_mask, length_mask and
# attention_mask only compare their lengths with column indices: any value is valid there.
COMPARED_LENGTHS = {"sequence_mask", "length_mask", "attention_mask"}
SEGMENT_CLASSES = {"negative", "sum_overflow", "huge_offsets", "true_value"}


def _huge(v) -> bool:
    values = v if isinstance(v, tuple) else (v,)
    return any(isinstance(x, int) and x > I32_MAX for x in values)


@pytest.mark.parametrize("op_name", sorted({case.op_name for case in CASES}))
def test_every_applicable_bad_input_class_has_rows(op_name: str) -> None:
    rows = [case for case in CASES if case.op_name == op_name]
    params = inspect.signature(getattr(jaxops, op_name)).parameters
    missing = []
    if not any(case.error_class is TypeError for case in rows):
        missing.append("a wrong-dtype (TypeError) row")
    for name in SIZE_PARAMS:
        if name in params and not any(_huge(case.static_kwargs.get(name)) for case in rows):
            missing.append(f"a row with a huge {name}")
    for name in SCALAR_PARAMS:
        if name in params and not any(
            case.klass == "unrepresentable" and name in case.static_kwargs for case in rows
        ):
            missing.append(f"an unrepresentable {name} row")
    if "lengths" in params:
        narrow = {case.id.rsplit("-", 1)[1] for case in rows if case.klass == "narrow_valid"}
        missing += [f"a narrow_valid row for {dt}" for dt in LENGTH_DTYPES if dt not in narrow]
        if op_name not in COMPARED_LENGTHS:
            have = {case.klass for case in rows}
            missing += [f"a {klass} row" for klass in sorted(SEGMENT_CLASSES - have)]
    assert not missing, f"{op_name} lacks: {', '.join(missing)}"


# --------------------------------------------------------------------------- #
# pack_sequences / unpack_sequences: each the other's gradient (SPEC §8)
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dt", LENGTH_DTYPES)
def test_packed_sequences_gradients_under_jit_vmap(dt: str) -> None:
    """``checked(jit(vmap(grad)))`` with the lengths batched, in every lengths dtype.

    The batch holds ``[L, L, L]`` (8-bit: 300 rows, columns past the dtype) and
    ``[L, 0, L]``; ``values`` has two rows past the sum, whose gradient is 0.
    """
    length, full = narrow(dt)
    num_rows, row_length, total = 2, 2 * length, 3 * length + 2
    batch = np.stack([full, a([length, 0, length], dt)])
    rng = np.random.default_rng(0)
    values = rng.standard_normal((2, total, 2)).astype(np.float32)
    ct_rows = rng.standard_normal((2, num_rows, row_length, 2)).astype(np.float32)
    ct_flat = rng.standard_normal((2, total, 2)).astype(np.float32)
    static = {"num_rows": num_rows, "row_length": row_length}

    def pack_loss(v, n, ct):
        return jnp.sum(jaxops.pack_sequences(v, n, **static).values * ct)

    def unpack_loss(r, n, ct):
        return jnp.sum(jaxops.unpack_sequences(r, n, total_length=total) * ct)

    with jax.enable_x64(True) if is_64(dt) else contextlib.nullcontext():
        grad_pack = jaxops.checked(jax.jit(jax.vmap(jax.grad(pack_loss))))
        grad_unpack = jaxops.checked(jax.jit(jax.vmap(jax.grad(unpack_loss))))
        got_pack = np.asarray(grad_pack(values, batch, ct_rows))
        got_unpack = np.asarray(grad_unpack(ct_rows, batch, ct_flat))
    for b in range(2):
        want = unpack_sequences_model(ct_rows[b], batch[b], total_length=total)
        _assert_same(f"grad pack_sequences [{b}]", got_pack[b], want)
        want = pack_sequences_model(ct_flat[b], batch[b], **static)[0]
        _assert_same(f"grad unpack_sequences [{b}]", got_unpack[b], want)


@pytest.mark.parametrize("dt", ["bfloat16", "float16", "float64"])
def test_packed_sequences_gradients_keep_the_data_dtype(dt: str) -> None:
    lengths = a([3, 1, 4], "int8")
    with jax.enable_x64(True) if is_64(dt) else contextlib.nullcontext():
        values = jnp.arange(8, dtype=dt)
        packed = lambda v: jaxops.pack_sequences(v, lengths, num_rows=2, row_length=4).values
        g = jax.grad(lambda v: jnp.sum(packed(v).astype(jnp.float32)))(values)
        rows = jnp.ones((2, 4), dt)
        unpacked = lambda r: jaxops.unpack_sequences(r, lengths, total_length=9)
        h = jax.grad(lambda r: jnp.sum(unpacked(r).astype(jnp.float32)))(rows)
    assert g.dtype == values.dtype and h.dtype == rows.dtype
    np.testing.assert_array_equal(np.asarray(g, np.float32), np.ones(8))
    np.testing.assert_array_equal(np.asarray(h, np.float32), [[1, 1, 1, 1], [1, 1, 1, 1]])
