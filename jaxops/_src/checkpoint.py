"""Checkpoints of any pytree of arrays (a Scope, a whole train state) as safetensors files.

The file is a plain safetensors file written by the ``safetensors`` package:
an 8-byte little-endian header length, a JSON header naming each tensor's
dtype, shape and byte range (``data_offsets``), then the payload. Any
safetensors reader opens it. jaxops adds three string fields to the header's
``__metadata__``:

* ``jaxops.version``: the format version, ``"1"``;
* ``jaxops.leaves``: JSON ``[[name, kind], ...]`` in pytree order, where
  ``name`` is the leaf's key path (``"opt_state/0/mu/encoder/w"``, also its
  tensor name) and ``kind`` is ``"array"`` or the Python scalar type
  (``"int"``, ``"float"``, ``"bool"``) the leaf had;
* ``jaxops.sha256``: SHA-256 over the header (every tensor's name, dtype and
  shape, and the other metadata fields, as canonical JSON) followed by each
  tensor's bytes in name order. The loader also requires the byte ranges to
  be disjoint and to cover the payload exactly, so an edited offset either
  breaks that or changes which bytes a name reads: with the checksum, any
  edit to the header or the payload is detected.

The loader parses the header with its own strict checks before reading any
payload (every failure is a ``ValueError`` naming the path), reads the payload
into one buffer and returns NumPy views of it: loading a file of S bytes
allocates S bytes plus the parsed header (at most 16 MiB of JSON, which
Python's parser turns into at most ~25 times that). Nothing in the file is
executed.

The writer has safetensors write the file inside a private working directory
beside the destination (safetensors 0.8 itself writes through a temporary
file of mode 0600 and a rename; older versions write in place), then sets the
file's mode, fsyncs it and renames it over the destination. A writer holds an
``flock`` on its working directory while it lives, so the next save can tell
the directories of killed writers from those of live ones and remove them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from typing import Any, overload

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from jaxops._src import checks
from jaxops._src.scope import Scope, _as_scope, _check_name, _is_array_like

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so stale temporaries are left alone.
    fcntl = None

_VERSION = "1"
# The safetensors dtype codes that safetensors' NumPy loader reads back exactly.
_DTYPES = {
    "BOOL": np.dtype(np.bool_), "U8": np.dtype(np.uint8), "I8": np.dtype(np.int8),
    "U16": np.dtype(np.uint16), "I16": np.dtype(np.int16), "U32": np.dtype(np.uint32),
    "I32": np.dtype(np.int32), "U64": np.dtype(np.uint64), "I64": np.dtype(np.int64),
    "F16": np.dtype(np.float16), "BF16": np.dtype(jnp.bfloat16), "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64), "C64": np.dtype(np.complex64),
}  # fmt: skip
_SUPPORTED = ", ".join(dtype.name for dtype in _DTYPES.values())
_SCALARS = {"bool": bool, "int": int, "float": float}  # Python scalar leaves, by kind
_SCALAR_DTYPES = {
    "bool": np.dtype(np.bool_),
    "int": np.dtype(np.int64),
    "float": np.dtype(np.float64),
}
_MAX_HEADER = 16 * 2**20  # bytes; bounds the memory the JSON parser can be made to use
_MAX_RANK = 32
_ENTRY_FIELDS = {"dtype", "shape", "data_offsets"}
_LOCATION = "a jaxops checkpoint (a safetensors file written by save_checkpoint)"


# --------------------------------------------------------------------------- #
# Leaves and their names
# --------------------------------------------------------------------------- #


def _key_name(op: str, key_path: tuple) -> str:
    """``"a/0/mu/w"`` for a key path; ``ValueError`` when that is not a valid Scope name."""
    parts = []
    for key in key_path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, jax.tree_util.GetAttrKey):
            parts.append(key.name)
        elif isinstance(key, jax.tree_util.FlattenedIndexKey):
            parts.append(str(key.key))
        else:
            parts.append(str(key))
    name = "/".join(parts)
    if not name:
        raise checks.value_error(
            op, "a pytree whose leaves have key paths (a dict, Scope, tuple...)", "a bare leaf"
        )
    try:
        return _check_name(op, name, "leaf name")
    except ValueError:
        raise checks.value_error(
            op,
            "leaf names (key paths joined by '/') without empty segments or edge '/'",
            f"{name!r} for the leaf at {jax.tree_util.keystr(key_path)}",
        ) from None


def _named_leaves(op: str, tree: Any) -> list[tuple[str, Any]]:
    """``(name, leaf)`` in pytree order; names are unique."""
    named, seen = [], set()
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = _key_name(op, key_path)
        if name in seen or name == "__metadata__":
            got = f"{name!r} twice" if name in seen else "the name safetensors reserves"
            expected = "leaves with distinct names other than '__metadata__'"
            raise checks.value_error(op, expected, got)
        seen.add(name)
        named.append((name, leaf))
    return named


def _kind(leaf: Any) -> str:
    """``"array"``, or the Python scalar type (a key of ``_SCALARS``) the loader gives back."""
    for kind, scalar_type in _SCALARS.items():
        if type(leaf) is scalar_type:
            return kind
    return "array"


def _host_array(op: str, name: str, value: Any) -> np.ndarray:
    """``value`` as a little-endian, C-contiguous NumPy array of a supported dtype."""
    if checks.is_traced(value):
        raise checks.type_error(
            op,
            f"a concrete array for {name!r}",
            "a tracer",
            f"Call {op} outside jit, vmap and grad.",
        )
    kind = _kind(value)
    if kind != "array":
        try:
            return np.asarray(value, _SCALAR_DTYPES[kind])
        except OverflowError:
            raise checks.value_error(
                op, f"a Python int in the int64 range for {name!r}", str(value)
            ) from None
    if not _is_array_like(value):
        raise checks.type_error(
            op, f"an array or a Python bool, int or float for {name!r}", type(value).__name__
        )
    array = np.asarray(value)
    if array.dtype.byteorder == ">":  # safetensors stores little-endian
        array = array.astype(array.dtype.newbyteorder("<"))
    if array.dtype not in _DTYPES.values():
        raise checks.type_error(
            op,
            f"an array of a supported dtype for {name!r}",
            f"dtype {array.dtype.name}",
            f"Supported: {_SUPPORTED}.",
        )
    return array if array.flags.c_contiguous else array.copy(order="C")


def _checksum(metadata: dict[str, str], arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over the canonical header (without the checksum) and the arrays' bytes."""
    header = {
        "metadata": {k: v for k, v in metadata.items() if k != "jaxops.sha256"},
        "tensors": {name: [a.dtype.name, list(a.shape)] for name, a in arrays.items()},
    }
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    digest = hashlib.sha256(len(text).to_bytes(8, "little") + text)
    for name in sorted(arrays):
        digest.update(arrays[name].reshape(-1).view(np.uint8))
    return digest.hexdigest()


# --------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------- #


def _fsync_directory(directory: str) -> None:
    if not hasattr(os, "O_DIRECTORY"):  # Windows cannot open a directory to fsync it.
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_workdir(directory: str, base: str) -> tuple[str, int | None]:
    """A new private directory beside the destination, locked: ``(path, lock fd)``.

    The lock (``flock`` on the directory, held until the fd is closed) tells
    other savers that its writer is alive.
    """
    while True:
        workdir = os.path.join(directory, f".{base}.{secrets.token_hex(8)}.tmp")
        try:
            os.mkdir(workdir, 0o700)
        except FileExistsError:
            continue
        if fcntl is None:
            return workdir, None
        try:
            fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue  # a cleaner removed it before we could lock it
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits only while a cleaner inspects it
        if _still_at(fd, workdir):
            return workdir, fd
        os.close(fd)


def _still_at(fd: int, path: str) -> bool:
    """Whether ``path`` still names the file or directory open as ``fd``."""
    try:
        return os.path.samestat(os.fstat(fd), os.lstat(path))
    except FileNotFoundError:
        return False


def _remove_stale_workdirs(directory: str, base: str) -> None:
    """Removes the working directories for ``base`` that no live writer holds locked."""
    if fcntl is None:
        return
    pattern = re.compile(re.escape(f".{base}.") + r"[0-9a-f]{16}\.tmp")
    for entry in os.listdir(directory):
        if not pattern.fullmatch(entry):
            continue
        stale = os.path.join(directory, entry)
        with contextlib.suppress(OSError):  # gone, not ours, or locked by a live writer
            fd = os.open(stale, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _still_at(fd, stale):
                    shutil.rmtree(stale)
            finally:
                os.close(fd)


def _write(op: str, tmp: str, target: str, arrays: dict, metadata: dict[str, str]) -> None:
    """Writes ``tmp`` with safetensors, sets its mode, fsyncs it and renames it over ``target``."""
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)  # the replaced file's mode
    except FileNotFoundError:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        mode = stat.S_IMODE(os.stat(tmp).st_mode)  # what open() gives: 0o666 less the umask
    safetensors.numpy.save_file(arrays, tmp, metadata=metadata)  # may replace tmp (0o600)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        header_size = int.from_bytes(os.read(fd, 8), "little")
        if header_size > _MAX_HEADER:
            raise checks.value_error(
                op,
                f"a header of at most {_MAX_HEADER} bytes",
                f"{header_size} bytes for {len(arrays)} leaves",
                "Save fewer, larger arrays.",
            )
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, target)


def _save(op: str, path: str | os.PathLike, tree: Any) -> None:
    leaves = _named_leaves(op, tree)
    arrays = {name: _host_array(op, name, leaf) for name, leaf in leaves}
    metadata = {
        "jaxops.version": _VERSION,
        "jaxops.leaves": json.dumps([[name, _kind(leaf)] for name, leaf in leaves]),
    }
    metadata["jaxops.sha256"] = _checksum(metadata, arrays)

    target = os.path.realpath(os.fspath(path))  # a symlink is written through
    directory, base = os.path.split(target)
    workdir, lock = _make_workdir(directory, base)
    try:
        _write(op, os.path.join(workdir, base), target, arrays, metadata)
        _fsync_directory(directory)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if lock is not None:
            os.close(lock)  # releases the lock
    _remove_stale_workdirs(directory, base)


# --------------------------------------------------------------------------- #
# Reading
# --------------------------------------------------------------------------- #


def _corrupt(op: str, path: str, got: str) -> ValueError:
    return checks.value_error(op, f"{_LOCATION} at {path!r}", got)


def _json(text: str) -> Any:
    """``json.loads`` that refuses duplicate keys, floats, NaN and Infinity (``ValueError``)."""

    def pairs(items):
        keys = [key for key, _ in items]
        if len(set(keys)) != len(keys):
            raise ValueError(f"a duplicate key among {keys[:10]}")
        return dict(items)

    def refuse(token):
        raise ValueError(f"the non-integer number {token[:20]}")

    try:
        return json.loads(text, object_pairs_hook=pairs, parse_float=refuse, parse_constant=refuse)
    except RecursionError as e:
        raise ValueError("JSON nested too deeply") from e


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry(name: str, entry: Any) -> tuple[np.dtype, tuple[int, ...], int, int] | str:
    """``(dtype, shape, begin, end)`` of one header entry, or what is wrong with it."""
    if not isinstance(entry, dict) or set(entry) != _ENTRY_FIELDS:
        return f"an entry for {name!r} that is not {{dtype, shape, data_offsets}}"
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPES:
        return f"an unsupported dtype {dtype!r:.40} for {name!r}"
    dtype = _DTYPES[dtype]
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_RANK
        or not all(_is_int(d) and d >= 0 for d in shape)
        or math.prod(d for d in shape if d) * dtype.itemsize >= 2**63  # NumPy's limit
    ):
        return f"an invalid shape {shape!r:.80} for {name!r}"
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_int, offsets))):
        return f"invalid data_offsets {offsets!r:.80} for {name!r}"
    begin, end = offsets
    if not 0 <= begin <= end or end - begin != math.prod(shape) * dtype.itemsize:
        return f"data_offsets {offsets} that do not hold shape {shape} of {dtype.name} for {name!r}"
    return dtype, tuple(shape), begin, end


def _parse_header(op: str, path: str, text: bytes, payload_size: int):
    """``(metadata, {name: (dtype, shape, begin, end)})``, every entry checked."""
    try:
        header = _json(text.decode("utf-8"))
    except ValueError as e:  # includes UnicodeDecodeError and JSONDecodeError
        raise _corrupt(op, path, f"an unreadable header ({e})") from e
    if not isinstance(header, dict):
        raise _corrupt(op, path, "a header that is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _corrupt(op, path, "a header without a __metadata__ object of strings")
    if metadata.get("jaxops.version") != _VERSION:
        version = metadata.get("jaxops.version")
        raise _corrupt(op, path, f"jaxops.version {version!r:.40}, not {_VERSION!r}")
    if not {"jaxops.leaves", "jaxops.sha256"} <= set(metadata):
        raise _corrupt(op, path, "a __metadata__ without jaxops.leaves and jaxops.sha256")
    entries = {}
    for name, entry in header.items():
        try:
            _check_name(op, name)
        except ValueError:
            raise _corrupt(op, path, f"an invalid name {name!r:.80}") from None
        entries[name] = _entry(name, entry)
        if isinstance(entries[name], str):
            raise _corrupt(op, path, entries[name])
    # Disjoint, in bounds, and covering the payload: each range starts where the last ended.
    position = 0
    for name, (*_, begin, end) in sorted(entries.items(), key=lambda item: item[1][2:]):
        if begin != position:
            what = "overlaps another entry" if begin < position else "leaves a gap before it"
            raise _corrupt(op, path, f"data_offsets for {name!r} that {what}")
        position = end
    if position > payload_size:
        got = f"a truncated file: its entries need {position} payload bytes, it has {payload_size}"
        raise _corrupt(op, path, got)
    if position < payload_size:
        raise _corrupt(op, path, f"{payload_size - position} bytes past the last entry")
    return metadata, entries


def _parse_leaves(op: str, path: str, metadata: dict[str, str], entries: dict) -> dict[str, str]:
    """``{name: kind}`` from ``jaxops.leaves``, checked against the entries."""
    try:
        leaves = _json(metadata["jaxops.leaves"])
    except ValueError as e:
        raise _corrupt(op, path, f"an unreadable jaxops.leaves ({e})") from e
    if not (
        isinstance(leaves, list)
        and all(isinstance(leaf, list) and len(leaf) == 2 for leaf in leaves)
        and all(isinstance(name, str) and kind in ("array", *_SCALARS) for name, kind in leaves)
    ):
        raise _corrupt(op, path, "a jaxops.leaves that is not a list of [name, kind] pairs")
    kinds = dict(leaves)
    if len(kinds) != len(leaves) or kinds.keys() != entries.keys():
        raise _corrupt(op, path, "a jaxops.leaves that does not list each tensor once")
    for name, kind in kinds.items():
        dtype, shape = entries[name][:2]
        if kind != "array" and (shape != () or dtype != _SCALAR_DTYPES[kind]):
            raise _corrupt(op, path, f"a Python {kind} {name!r} of shape {shape} and {dtype.name}")
    return kinds


def _read_into(f, buffer: bytearray) -> int:
    view, filled = memoryview(buffer), 0
    while filled < len(buffer):
        count = f.readinto(view[filled:])
        if not count:
            break
        filled += count
    return filled


def _read(op: str, path: str) -> tuple[dict[str, str], dict, bytearray]:
    """``(metadata, entries, payload)``: the header is checked before the payload is read."""
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        prefix = f.read(8)
        if len(prefix) < 8:
            raise _corrupt(op, path, f"a truncated file of {size} bytes")
        if prefix == b"\x93JAXOPS-":
            raise _corrupt(op, path, "a file in jaxops' old scope format, which is no longer read")
        header_size = int.from_bytes(prefix, "little")
        if header_size > size - 8:
            got = f"a truncated file of {size} bytes (its header length says {header_size})"
            raise _corrupt(op, path, got)
        if header_size > _MAX_HEADER:
            raise _corrupt(op, path, f"a header of {header_size} bytes, over {_MAX_HEADER}")
        header = f.read(header_size)
        metadata, entries = _parse_header(op, path, header, size - 8 - header_size)
        payload = bytearray(size - 8 - header_size)  # the entries tile it exactly
        if len(header) != header_size or _read_into(f, payload) != len(payload) or f.read(1):
            raise _corrupt(op, path, "a file that changed size while it was read")
    return metadata, entries, payload


def _load(op: str, path: str | os.PathLike) -> dict[str, Any]:
    """``{name: NumPy array or Python scalar}`` from the file at ``path``."""
    path = os.fspath(path)
    try:
        metadata, entries, payload = _read(op, path)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            checks.message(op, "an existing file", f"no file at {path!r}")
        ) from e
    kinds = _parse_leaves(op, path, metadata, entries)
    arrays = {  # views of the one payload buffer: no copy
        name: np.frombuffer(payload, dtype, math.prod(shape), begin).reshape(shape)
        for name, (dtype, shape, begin, _) in entries.items()
    }
    if _checksum(metadata, arrays) != metadata["jaxops.sha256"]:
        raise _corrupt(op, path, "a corrupt file: the checksum does not match")
    return {
        name: array if kinds[name] == "array" else _SCALARS[kinds[name]](array[()])
        for name, array in arrays.items()
    }


def _spec(op: str, name: str, leaf: Any) -> tuple[tuple[int, ...], np.dtype]:
    if _is_array_like(leaf):
        return tuple(leaf.shape), np.dtype(leaf.dtype)
    if _kind(leaf) != "array":
        return (), _SCALAR_DTYPES[_kind(leaf)]
    raise checks.type_error(
        op, f"`like` to hold arrays or Python scalars, at {name!r}", type(leaf).__name__
    )


def _differences(op: str, loaded: dict[str, Any], like: list[tuple[str, Any]]) -> Iterator[str]:
    names = {name for name, _ in like}
    yield from (f"missing {name!r}" for name, _ in like if name not in loaded)
    yield from (f"unexpected {name!r}" for name in sorted(loaded) if name not in names)
    for name, leaf in like:
        if name not in loaded:
            continue
        (shape, dtype), (want_shape, want_dtype) = (
            _spec(op, name, loaded[name]),
            _spec(op, name, leaf),
        )
        if shape != want_shape:
            yield f"{name!r} has shape {shape}, like {want_shape}"
        if dtype != want_dtype:
            yield f"{name!r} has dtype {dtype.name}, like {want_dtype.name}"


def _load_like(op: str, path: str | os.PathLike, like: Any) -> Any:
    named_like = None if like is None else _named_leaves(op, like)
    loaded = _load(op, path)
    if named_like is None:
        return Scope._make(loaded)
    differences = list(_differences(op, loaded, named_like))
    if differences:
        raise checks.value_error(
            op,
            "names, shapes and dtypes like `like`",
            f"{len(differences)} difference(s) in {os.fspath(path)!r}: " + "; ".join(differences),
        )
    treedef = jax.tree_util.tree_structure(like)
    return jax.tree_util.tree_unflatten(treedef, [loaded[name] for name, _ in named_like])


# --------------------------------------------------------------------------- #
# Public functions
# --------------------------------------------------------------------------- #


def save_checkpoint(path: str | os.PathLike, tree: Any) -> None:
    """Writes a pytree of arrays and Python scalars to one safetensors file, atomically.

    ``tree`` can be a whole train state, such as ``{"params": Scope, "opt_state":
    optax state, "step": 7}``. Each leaf is stored under its key path
    (``"opt_state/0/mu/encoder/w"``) as a tensor of a safetensors file that
    any safetensors reader opens; jaxops' metadata (format version, the leaves
    in pytree order with their Python scalar types, and a checksum over header
    and payload) sits in its ``__metadata__``. Every name, shape and dtype
    round-trips bit for bit through :func:`load_checkpoint` (bfloat16 and
    64-bit types included); big-endian arrays are stored little-endian.

    The write is atomic: the file is written in a private, locked working
    directory beside the destination (``.<name>.<random>.tmp``), fsynced and
    renamed over ``path``, then the directory is fsynced; a crash leaves the
    previous file (or none). The file gets the mode ``open`` would give it
    (the umask applies), or the mode of the file it replaces; a symlink at
    ``path`` is written through (its target is replaced). Working directories
    left by killed writers for the same destination are removed by the next
    save; those of live writers (which hold their lock) are kept.

    Args:
      path: destination file (``str`` or ``os.PathLike``).
      tree: a pytree whose leaves are concrete arrays (NumPy, ``jax.Array``) of
        dtype bool, (u)int8-64, float16/32/64, bfloat16 or complex64, or Python
        ``bool``, ``int`` (int64) and ``float`` (float64) values.

    Raises:
      TypeError: a leaf is a tracer (call it outside ``jit``), not an array or
        Python scalar, or of an unsupported dtype (float8, int4, complex128...).
      ValueError: two leaves get the same name, a key path is not a valid
        name (an empty dict key), or ``tree`` is a bare leaf.
      OSError: the file cannot be written.

    Examples:
      >>> import os, tempfile, optax, jax.numpy as jnp, jaxops
      >>> path = os.path.join(tempfile.mkdtemp(), "state.safetensors")
      >>> params = jaxops.Scope({"w": jnp.ones((2, 2), jnp.bfloat16)})
      >>> state = {"params": params, "opt_state": optax.sgd(0.1).init(params), "step": 7}
      >>> jaxops.save_checkpoint(path, state)
      >>> loaded = jaxops.load_checkpoint(path)  # without `like`: a Scope keyed by key paths
      >>> loaded, loaded["step"]
      (Scope({'params/w': bfloat16[2,2], 'step': int}), 7)

    Caffe2: ``Save`` of a workspace's blobs (a ``db``); here one atomic file.
    """
    _save("save_checkpoint", path, tree)


@overload
def load_checkpoint(path: str | os.PathLike, *, like: None = None) -> Scope: ...
@overload
def load_checkpoint(path: str | os.PathLike, *, like: Any) -> Any: ...
def load_checkpoint(path: str | os.PathLike, *, like: Any = None) -> Any:
    """Reads a file written by :func:`save_checkpoint`; array leaves are NumPy arrays.

    With ``like``, rebuilds ``like``'s pytree structure (Scopes, optax
    NamedTuples, tuples, dicts) from the stored leaves, after checking that the
    names, shapes and dtypes match. Without it, returns a Scope keyed by the
    leaves' key paths. Leaves saved as Python ``bool``/``int``/``float`` come
    back as such; the others are NumPy arrays (views of one buffer holding the
    file's payload), so int64 and float64 survive even with
    ``jax_enable_x64`` off. Nothing in the file is executed: there is no
    pickle. Every byte of the header and payload is checked (a checksum, and
    byte ranges that must tile the payload) before any array is returned.

    Args:
      path: the file (``str`` or ``os.PathLike``).
      like: optional pytree of arrays, ``jax.ShapeDtypeStruct`` s or Python
        scalars: the structure to rebuild and the names, shapes and dtypes the
        file must hold.

    Returns:
      A pytree with ``like``'s structure, or a Scope.

    Raises:
      FileNotFoundError: no file at ``path`` (the message names it).
      ValueError: the file is truncated, corrupt, edited or not a jaxops
        checkpoint (the message names the path), or it does not match
        ``like`` (the message lists every missing or unexpected name and
        every shape and dtype difference).

    Examples:
      >>> import os, tempfile, numpy as np, optax, jaxops
      >>> path = os.path.join(tempfile.mkdtemp(), "state.safetensors")
      >>> params = jaxops.Scope({"w": np.zeros(3, np.float32)})
      >>> opt = optax.adam(1e-3)
      >>> state = {"params": params, "opt_state": opt.init(params), "step": 0}
      >>> jaxops.save_checkpoint(path, {**state, "step": 5})
      >>> restored = jaxops.load_checkpoint(path, like=state)
      >>> restored["step"], type(restored["opt_state"][0]).__name__
      (5, 'ScaleByAdamState')
      >>> jaxops.load_checkpoint(path).names()[:2]
      ('opt_state/0/count', 'opt_state/0/mu/w')

    Caffe2: ``Load`` into a workspace.
    """
    return _load_like("load_checkpoint", path, like)


def save_scope(path: str | os.PathLike, scope: Scope) -> None:
    """Writes a Scope with :func:`save_checkpoint` (same file format and guarantees).

    Args:
      path: destination file (``str`` or ``os.PathLike``).
      scope: a Scope (or mapping) of concrete arrays and Python scalars.

    Raises:
      TypeError: ``scope`` is not a Scope or mapping, or as :func:`save_checkpoint`.
      ValueError: as :func:`save_checkpoint`.
      OSError: the file cannot be written.

    Examples:
      >>> import os, tempfile, jax.numpy as jnp, jaxops
      >>> path = os.path.join(tempfile.mkdtemp(), "params.safetensors")
      >>> jaxops.save_scope(path, jaxops.Scope({"w": jnp.ones((2, 2), jnp.bfloat16)}))
      >>> jaxops.load_scope(path)["w"].dtype
      dtype(bfloat16)
    """
    _save("save_scope", path, _as_scope("save_scope", "scope", scope))


def load_scope(path: str | os.PathLike, *, like: Scope | None = None) -> Scope:
    """Reads a checkpoint as a Scope keyed by key paths (see :func:`load_checkpoint`).

    Args:
      path: the file (``str`` or ``os.PathLike``).
      like: optional Scope (arrays or ``jax.ShapeDtypeStruct`` s) whose names,
        shapes and dtypes the file must match.

    Returns:
      A Scope of NumPy arrays (and Python scalars saved as such).

    Raises:
      FileNotFoundError: no file at ``path`` (the message names it).
      ValueError: as :func:`load_checkpoint`.

    Examples:
      >>> import os, tempfile, numpy as np, jaxops
      >>> path = os.path.join(tempfile.mkdtemp(), "state.safetensors")
      >>> jaxops.save_scope(path, jaxops.Scope({"step": np.int64(7)}))
      >>> jaxops.load_scope(path)
      Scope({'step': int64[]})
      >>> jaxops.load_scope(path, like=jaxops.Scope({"step": np.int32(0), "w": np.ones(2)}))
      Traceback (most recent call last):
      ...
      ValueError: load_scope: expected names, shapes and dtypes like `like`, got 2 difference(s)
      in '...': missing 'w'; 'step' has dtype int64, like int32.
    """
    op = "load_scope"
    return _load_like(op, path, None if like is None else _as_scope(op, "like", like))
