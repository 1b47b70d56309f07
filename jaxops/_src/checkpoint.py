"""Checkpoints of a :class:`~jaxops.Scope`: one file, exact, atomic, never unpickled."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxops._src import checks
from jaxops._src.scope import Scope, _as_scope, _check_name, _is_array_like

# File layout: MAGIC, the header length (8 bytes, little-endian), the JSON
# header (utf-8), then the payload: each array's C-order bytes, concatenated in
# header order. The header lists name, dtype name, shape, offset and nbytes
# per array and the payload's SHA-256. Nothing in the file is ever executed.
_MAGIC = b"\x93JAXOPS-SCOPE\n"
_FORMAT = "jaxops.scope"
_VERSION = 1
_DTYPES = {
    np.dtype(t).name: np.dtype(t)
    for t in (
        np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
        np.uint64, np.float16, np.float32, np.float64, np.complex64, np.complex128,
        jnp.bfloat16, jnp.float8_e4m3fn, jnp.float8_e5m2, jnp.int4, jnp.uint4,
    )
}  # fmt: skip


def _host_array(op: str, name: str, value: Any) -> np.ndarray:
    if checks.is_traced(value):
        raise checks.type_error(
            op,
            f"a concrete array for {name!r}",
            "a tracer",
            "Call save_scope outside jit, vmap and grad.",
        )
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as e:
        raise checks.type_error(op, f"an array for {name!r}", type(value).__name__) from e
    if array.dtype.name not in _DTYPES or _DTYPES[array.dtype.name] != array.dtype:
        raise checks.type_error(
            op,
            f"an array of a supported dtype for {name!r}",
            f"dtype {array.dtype}",
            "Supported: " + ", ".join(_DTYPES) + ".",
        )
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return array if array.flags.c_contiguous else array.copy(order="C")


def _fsync_directory(directory: str) -> None:
    if not hasattr(os, "O_DIRECTORY"):  # Windows cannot open a directory to fsync it.
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_scope(path: str | os.PathLike, scope: Scope) -> None:
    """Writes ``scope`` to one file, atomically, in a format that needs no pickle.

    Every name, shape and dtype round-trips bit for bit through
    :func:`load_scope`, bfloat16 included. The file is written to a temporary
    file in the same directory, flushed and fsynced, then renamed over
    ``path`` (``os.replace``) and the directory fsynced: a crash leaves the
    previous file (or none), never a truncated one, and the temporary file is
    removed on error. Python scalar values are saved as NumPy would convert
    them (``int`` as int64, ``float`` as float64).

    Args:
      path: destination file (``str`` or ``os.PathLike``).
      scope: a Scope (or mapping) of concrete arrays.

    Raises:
      TypeError: ``scope`` is not a Scope, holds a tracer (call it outside
        ``jit``) or an unsupported dtype.
      OSError: the file cannot be written.

    Examples:
      >>> import os, tempfile, jax.numpy as jnp, jaxops
      >>> path = os.path.join(tempfile.mkdtemp(), "params.scope")
      >>> jaxops.save_scope(path, jaxops.Scope({"w": jnp.ones((2, 2), jnp.bfloat16)}))
      >>> jaxops.load_scope(path)["w"].dtype
      dtype(bfloat16)

    Caffe2: ``Save`` of a workspace's blobs (a ``db``); here one atomic file.
    """
    op = "save_scope"
    path = os.fspath(path)
    scope = _as_scope(op, "scope", scope)
    arrays = [(name, _host_array(op, name, value)) for name, value in scope.items()]
    entries, offset, digest = [], 0, hashlib.sha256()
    for name, array in arrays:
        entries.append(
            {"name": name, "dtype": array.dtype.name, "shape": list(array.shape),
             "offset": offset, "nbytes": array.nbytes}
        )  # fmt: skip
        offset += array.nbytes
        digest.update(array.reshape(-1).view(np.uint8))
    header = json.dumps(
        {"format": _FORMAT, "version": _VERSION, "payload_nbytes": offset,
         "payload_sha256": digest.hexdigest(), "arrays": entries}
    ).encode("utf-8")  # fmt: skip

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC)
            f.write(len(header).to_bytes(8, "little"))
            f.write(header)
            for _, array in arrays:
                f.write(array.reshape(-1).view(np.uint8))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _corrupt(path: str, got: str) -> ValueError:
    return checks.value_error(
        "load_scope", f"a jaxops scope file (written by save_scope) at {path!r}", got
    )


def _parse(path: str, data: bytes) -> dict[str, np.ndarray]:
    """The arrays in ``data`` (a whole file), or ``ValueError`` naming ``path``."""
    start = len(_MAGIC) + 8
    if len(data) < start or not data.startswith(_MAGIC):
        if _MAGIC.startswith(data[: len(_MAGIC)]):
            raise _corrupt(path, f"a truncated file of {len(data)} bytes")
        raise _corrupt(path, "a file that does not start with the jaxops scope signature")
    header_len = int.from_bytes(data[len(_MAGIC) : start], "little")
    if len(data) < start + header_len:
        raise _corrupt(path, f"a truncated file of {len(data)} bytes (header incomplete)")
    try:
        header = json.loads(data[start : start + header_len].decode("utf-8"))
        if header["format"] != _FORMAT or header["version"] != _VERSION:
            raise _corrupt(path, f"format {header['format']!r} version {header['version']!r}")
        size, checksum = int(header["payload_nbytes"]), str(header["payload_sha256"])
        entries = [
            (e["name"], e["dtype"], tuple(int(d) for d in e["shape"]), int(e["offset"]),
             int(e["nbytes"]))
            for e in header["arrays"]
        ]  # fmt: skip
    except ValueError as e:
        if "load_scope" in str(e):
            raise
        raise _corrupt(path, f"an unreadable header ({e})") from e
    except (KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise _corrupt(path, f"an unreadable header ({type(e).__name__}: {e})") from e
    payload = memoryview(data)[start + header_len :]
    if len(payload) != size:
        kind = "truncated" if len(payload) < size else "oversized"
        raise _corrupt(
            path, f"a {kind} file: {len(payload)} payload bytes where the header says {size}"
        )
    if hashlib.sha256(payload).hexdigest() != checksum:
        raise _corrupt(path, "a corrupt file: the payload checksum does not match")
    arrays: dict[str, np.ndarray] = {}
    for name, dtype_name, shape, offset, nbytes in entries:
        try:
            _check_name("load_scope", name)
        except (TypeError, ValueError) as e:
            raise _corrupt(path, f"an invalid name {name!r}") from e
        if name in arrays:
            raise _corrupt(path, f"the name {name!r} twice")
        dtype = _DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
        if dtype is None:
            raise _corrupt(path, f"an unsupported dtype {dtype_name!r} for {name!r}")
        count = math.prod(shape)
        if (
            any(d < 0 for d in shape)
            or count * dtype.itemsize != nbytes
            or offset < 0
            or offset + nbytes > size
        ):
            raise _corrupt(path, f"an inconsistent entry for {name!r}")
        buffer = np.frombuffer(payload, dtype=np.uint8, count=nbytes, offset=offset)
        arrays[name] = buffer.copy().view(dtype).reshape(shape)
    return arrays


def _like_differences(loaded: Scope, like: Scope) -> list[str]:
    differences = [f"missing {n!r}" for n in like.names() if n not in loaded]
    differences += [f"unexpected {n!r}" for n in loaded.names() if n not in like]
    for name, want in like.items():
        if name not in loaded:
            continue
        got = loaded[name]
        want_shape = np.shape(want)
        want_dtype = np.dtype(want.dtype) if _is_array_like(want) else np.asarray(want).dtype
        if tuple(got.shape) != tuple(want_shape):
            differences.append(f"{name!r} has shape {tuple(got.shape)}, like {tuple(want_shape)}")
        if got.dtype != want_dtype:
            differences.append(f"{name!r} has dtype {got.dtype.name}, like {want_dtype.name}")
    return differences


def load_scope(path: str | os.PathLike, *, like: Scope | None = None) -> Scope:
    """Reads a Scope written by :func:`save_scope`; leaves are NumPy arrays.

    Names, shapes and dtypes come back exactly (bfloat16 included). Leaves are
    NumPy arrays, so int64 and float64 survive even with ``jax_enable_x64``
    off; pass the Scope to a jitted function (or ``jax.device_put``) to move it
    to the device. Nothing in the file is executed: there is no pickle.

    Args:
      path: the file (``str`` or ``os.PathLike``).
      like: optional Scope (arrays or ``jax.ShapeDtypeStruct`` s) whose names,
        shapes and dtypes the file must match.

    Returns:
      A Scope of NumPy arrays.

    Raises:
      FileNotFoundError: no file at ``path`` (the message names it).
      ValueError: the file is truncated, corrupt or not a scope file (the
        message names the path), or it does not match ``like`` (the message
        lists every missing or unexpected name and every shape and dtype
        difference).

    Examples:
      >>> import os, tempfile, numpy as np, jaxops
      >>> path = os.path.join(tempfile.mkdtemp(), "state.scope")
      >>> jaxops.save_scope(path, jaxops.Scope({"step": np.int64(7)}))
      >>> jaxops.load_scope(path)
      Scope({'step': int64[]})
      >>> jaxops.load_scope(path, like=jaxops.Scope({"step": np.int32(0), "w": np.ones(2)}))
      Traceback (most recent call last):
      ...
      ValueError: load_scope: expected names, shapes and dtypes like `like`, got 2 difference(s)
      in '...': missing 'w'; 'step' has dtype int64, like int32.

    Caffe2: ``Load`` into a workspace.
    """
    op = "load_scope"
    path = os.fspath(path)
    if like is not None:
        like = _as_scope(op, "like", like)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise FileNotFoundError(
            checks.message(op, "an existing file", f"no file at {path!r}")
        ) from e
    loaded = Scope._make(_parse(path, data))
    if like is not None:
        differences = _like_differences(loaded, like)
        if differences:
            raise checks.value_error(
                op,
                "names, shapes and dtypes like `like`",
                f"{len(differences)} difference(s) in {path!r}: " + "; ".join(differences),
            )
    return loaded
