"""Tests for jaxops._src.checkpoint against SPEC §6 "Checkpoints".

Sections: round trips; interoperability with safetensors; integrity (every
header and payload edit is detected); hostile headers; entries that alias,
overlap or miss the payload; memory; atomic writes, modes, symlinks and
temporary files; a structure-aware fuzz test of the loader.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import pathlib
import pickle
import re
import stat
import subprocess
import sys
import threading
import tracemalloc

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
import safetensors
import safetensors.flax
import safetensors.numpy
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxops
from jaxops import Scope
from jaxops._src import checkpoint

CHECKPOINT_DTYPES = [
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
    np.float16, jnp.bfloat16, np.float32, np.float64, np.complex64,
]  # fmt: skip
PREFIX = "load_checkpoint: expected a jaxops checkpoint (a safetensors file written by "


def _random(rng, shape, dtype):
    """Random bit patterns (NaN and -0.0 included for floats)."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    bits = rng.integers(0, 256, size=(*shape, dtype.itemsize), dtype=np.uint8)
    values = bits.view(dtype).reshape(shape)
    if dtype.kind == "f" and values.size:
        values.reshape(-1)[0] = np.nan
        values.reshape(-1)[-1] = -0.0
    return values


def _bits(a):
    return np.asarray(a).reshape(-1).view(np.uint8).tobytes()


def _assert_trees_bit_equal(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        if isinstance(w, (bool, int, float)):
            assert type(g) is type(w) and g == w
        else:
            assert np.asarray(g).dtype == np.asarray(w).dtype
            assert np.shape(g) == np.shape(w) and _bits(g) == _bits(w)


def _corrupt(path, got=""):
    """The start of the corrupt-file message for ``path``."""
    return re.escape(f"{PREFIX}save_checkpoint) at {str(path)!r}, got {got}")


def _split(data: bytes) -> tuple[dict, bytes]:
    """A safetensors file's parsed header and its payload."""
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _join(header, payload: bytes = b"") -> bytes:
    """A safetensors file from a header (a dict, or its raw text) and a payload."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode("utf-8")
    return len(text).to_bytes(8, "little") + text + payload


def _rehash(header: dict, payload: bytes) -> dict:
    """``header`` with jaxops.sha256 recomputed: what a forger who read the format would write."""
    arrays = {}
    for name, entry in header.items():
        if name != "__metadata__":
            begin, end = entry["data_offsets"]
            dtype = checkpoint._DTYPES[entry["dtype"]]
            arrays[name] = np.frombuffer(payload[begin:end], dtype).reshape(entry["shape"])
    header["__metadata__"]["jaxops.sha256"] = checkpoint._checksum(header["__metadata__"], arrays)
    return header


def _temporaries(directory):
    return sorted(p.name for p in pathlib.Path(directory).iterdir() if p.name.endswith(".tmp"))


def _train_state():
    params = Scope({"encoder/w": np.arange(6.0, dtype=np.float32).reshape(2, 3), "head/b": 1.5})
    params = params.set("encoder/e", jnp.ones((2,), jnp.bfloat16))
    opt = optax.adam(optax.cosine_decay_schedule(1e-2, 100))
    opt_state = opt.init(params)
    return {
        "params": params,
        "opt_state": opt_state,
        "step": 7,
        "extras": (np.int64(2**40), {"lr": 0.5, "done": False}, [np.arange(3, dtype=np.uint16)]),
    }


# --------------------------------------------------------------------------- #
# Round trips
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("dtype", CHECKPOINT_DTYPES, ids=lambda d: np.dtype(d).name)
def test_checkpoint_round_trip_is_exact(tmp_path, dtype):
    rng = np.random.default_rng(np.dtype(dtype).num)
    shapes = {"scalar": (), "empty": (0,), "empty2d": (3, 0), "vector": (5,), "a/b/matrix": (2, 3)}
    scope = Scope({name: _random(rng, shape, dtype) for name, shape in shapes.items()})
    path = tmp_path / "ckpt.safetensors"
    jaxops.save_scope(path, scope)
    loaded = jaxops.load_scope(path, like=scope)
    assert isinstance(loaded, Scope) and loaded.names() == scope.names()
    for name, value in scope.items():
        got = loaded[name]
        assert isinstance(got, np.ndarray) and got.dtype == np.dtype(dtype)
        assert got.shape == value.shape and _bits(got) == _bits(value)
        assert got.flags.writeable and got.flags.c_contiguous


def test_a_train_state_round_trips_into_the_structure_of_like(tmp_path):
    state = _train_state()
    path = tmp_path / "state.safetensors"
    jaxops.save_checkpoint(path, state)
    template = _train_state()  # same structure; ShapeDtypeStructs work too
    restored = jaxops.load_checkpoint(path, like=template)
    _assert_trees_bit_equal(restored, state)
    assert isinstance(restored["params"], Scope)
    assert type(restored["opt_state"][0]).__name__ == "ScaleByAdamState"
    assert isinstance(restored["opt_state"][0].mu, Scope)
    assert restored["step"] == 7 and type(restored["step"]) is int
    assert type(restored["extras"][1]["done"]) is bool and restored["params"]["head/b"] == 1.5
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), state)
    _assert_trees_bit_equal(jaxops.load_checkpoint(path, like=abstract), state)
    # Without `like`: a Scope keyed by the leaves' key paths.
    flat = jaxops.load_checkpoint(path)
    assert isinstance(flat, Scope)
    assert set(flat.names()) == {
        "params/encoder/e", "params/encoder/w", "params/head/b",
        "opt_state/0/count", "opt_state/0/mu/encoder/e", "opt_state/0/mu/encoder/w",
        "opt_state/0/mu/head/b", "opt_state/0/nu/encoder/e", "opt_state/0/nu/encoder/w",
        "opt_state/0/nu/head/b", "opt_state/1/count", "step", "extras/0", "extras/1/lr",
        "extras/1/done", "extras/2/0",
    }  # fmt: skip
    assert flat["step"] == 7 and flat["extras/0"].dtype == np.int64


def test_64_bit_values_survive_without_x64(tmp_path):
    with jax.enable_x64(False):
        big = np.array([2**40 + 1, -(2**50)], np.int64)
        precise = np.array([1.0 + 2.0**-40], np.float64)
        tree = {"big": big, "precise": precise, "int": 2**62, "float": 1.0 + 2.0**-50}
        path = tmp_path / "x.safetensors"
        jaxops.save_checkpoint(path, tree)
        loaded = jaxops.load_checkpoint(path, like=tree)
        assert loaded["big"].dtype == np.int64 and loaded["big"].tolist() == big.tolist()
        assert loaded["precise"].dtype == np.float64 and loaded["precise"][0] == precise[0]
        assert loaded["int"] == 2**62 and loaded["float"] == 1.0 + 2.0**-50


def test_non_contiguous_big_endian_and_empty_inputs_round_trip(tmp_path):
    path = tmp_path / "x.safetensors"
    strided = np.arange(12, dtype=np.int32)
    big_endian = {
        code: np.arange(5).astype(np.dtype(code).newbyteorder(">"))
        for code in ("f4", "f8", "i2", "i8", "u4", "c8")
    }
    tree = {"t": strided.reshape(3, 4).T, "s": strided[::3], "be": big_endian}
    jaxops.save_checkpoint(path, tree)
    loaded = jaxops.load_checkpoint(path)
    for name in ("t", "s"):
        np.testing.assert_array_equal(loaded[name], tree[name])
    for code, value in big_endian.items():
        got = loaded[f"be/{code}"]
        assert got.dtype == np.dtype(code).newbyteorder("<")  # converted, values kept
        np.testing.assert_array_equal(got, value)
    _, payload = _split(path.read_bytes())  # stored little-endian, as safetensors requires
    assert np.arange(5, dtype="<f4").tobytes() in payload
    jaxops.save_checkpoint(path, {})
    assert len(jaxops.load_checkpoint(path)) == 0
    jaxops.save_scope(path, Scope())
    assert len(jaxops.load_scope(path)) == 0


def test_load_with_like_lists_every_difference(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    jaxops.save_scope(path, Scope({"a": np.zeros(2), "b": np.zeros(3, np.float32), "c": 1}))
    like = Scope(
        {
            "a": jax.ShapeDtypeStruct((2,), jnp.float64),
            "b": jnp.zeros((4,), jnp.bfloat16),
            "d": jnp.zeros(1),
        }
    )
    with pytest.raises(ValueError) as info:
        jaxops.load_scope(path, like=like)
    message = str(info.value)
    assert message.startswith("load_scope: expected names, shapes and dtypes like `like`, got 4")
    assert str(path) in message
    for part in (
        "missing 'd'",
        "unexpected 'c'",
        "'b' has shape (3,), like (4,)",
        "'b' has dtype float32, like bfloat16",
    ):
        assert part in message
    assert "'a'" not in message
    state = _train_state()
    jaxops.save_checkpoint(path, state)
    like = {**state, "step": 1.0, "opt_state": optax.sgd(0.1).init(state["params"])}
    with pytest.raises(ValueError, match=r"^load_checkpoint: expected names, shapes and dtypes"):
        jaxops.load_checkpoint(path, like=like)
    with pytest.raises(ValueError, match=r"'step' has dtype int64, like float64"):
        jaxops.load_checkpoint(path, like=like)


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.safetensors"
    for load, op in (
        (jaxops.load_scope, "load_scope"),
        (jaxops.load_checkpoint, "load_checkpoint"),
    ):
        with pytest.raises(FileNotFoundError, match=rf"^{op}: expected an existing file, got no"):
            load(path)
        with pytest.raises(FileNotFoundError, match=r"nope.safetensors"):
            load(path)


def test_save_errors_leave_no_file(tmp_path):
    path = tmp_path / "x.safetensors"
    with pytest.raises(TypeError, match=r"^save_scope: expected `scope` to be a Scope, got int"):
        jaxops.save_scope(path, 3)
    with pytest.raises(
        TypeError, match=r"^save_checkpoint: expected a concrete array for 'w', got a"
    ):
        jax.jit(lambda w: jaxops.save_checkpoint(path, {"w": w}))(jnp.ones(2))
    cases = [
        (
            {"t": np.array(["text"])},
            TypeError,
            r"^save_checkpoint: expected an array of a supported",
        ),
        ({"f8": jnp.zeros(2, jnp.float8_e4m3fn)}, TypeError, r"got dtype float8_e4m3fn\. Supp"),
        ({"c": np.zeros(2, np.complex128)}, TypeError, r"got dtype complex128"),
        ({"i4": np.zeros(2, ml_dtypes.int4)}, TypeError, r"got dtype int4"),
        ({"s": "adam"}, TypeError, r"expected an array or a Python bool, int or float for 's'"),
        ({"z": 1j}, TypeError, r"expected an array or a Python bool, int or float for 'z', got co"),
        ({"big": 2**63}, ValueError, r"expected a Python int in the int64 range for 'big'"),
        (np.ones(3), ValueError, r"expected a pytree whose leaves have key paths"),
        ({"a": {"": 1}}, ValueError, r"got 'a/' for the leaf at \['a'\]\[''\]"),
        ({"a/b": 1, "a": {"b": 2}}, ValueError, r"distinct names.*, got 'a/b' twice"),
        ({"__metadata__": 1}, ValueError, r"got the name safetensors reserves"),
    ]
    for tree, error, match in cases:
        with pytest.raises(error, match=match):
            jaxops.save_checkpoint(path, tree)
    with pytest.raises(TypeError) as info:
        jaxops.save_checkpoint(path, cases[1][0])
    supported = str(info.value).split("Supported: ")[1]
    assert "float8" not in supported and "bfloat16" in supported and "complex64" in supported
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- #
# Interoperability: the file is a safetensors file
# --------------------------------------------------------------------------- #


def _every_dtype(rng):
    return {f"x/{np.dtype(d).name}": _random(rng, (3, 4), d) for d in CHECKPOINT_DTYPES}


def test_safetensors_numpy_loader_reads_every_dtype_exactly(tmp_path):
    tree = {**_every_dtype(np.random.default_rng(0)), "state": _train_state()}
    path = tmp_path / "c.safetensors"
    jaxops.save_checkpoint(path, tree)
    theirs = safetensors.numpy.load_file(path)
    ours = jaxops.load_checkpoint(path)
    assert set(theirs) == set(ours.names())
    for name, value in ours.items():
        assert theirs[name].dtype == np.asarray(value).dtype, name
        assert theirs[name].shape == np.shape(value) and _bits(theirs[name]) == _bits(value)
    with safetensors.safe_open(path, framework="numpy") as f:
        metadata = f.metadata()
    assert metadata["jaxops.version"] == "1"
    assert ["state/step", "int"] in json.loads(metadata["jaxops.leaves"])


def test_safetensors_flax_loader_reads_every_dtype_exactly(tmp_path):
    # safetensors.flax imports only jax and numpy: it does not need flax installed.
    tree = _every_dtype(np.random.default_rng(1))
    path = tmp_path / "c.safetensors"
    jaxops.save_checkpoint(path, tree)
    with jax.enable_x64(True):  # else jnp.array narrows int64 and float64 in the loader
        theirs = safetensors.flax.load_file(path)
    for name, value in tree.items():
        assert isinstance(theirs[name], jax.Array)
        got = np.asarray(theirs[name])
        assert got.dtype == value.dtype and _bits(got) == _bits(value), name


def test_a_safetensors_file_without_jaxops_metadata_is_refused(tmp_path):
    path = tmp_path / "plain.safetensors"
    safetensors.numpy.save_file({"w": np.ones(3, np.float32)}, path)
    with pytest.raises(ValueError, match=_corrupt(path, "a header without a __metadata__")):
        jaxops.load_checkpoint(path)
    safetensors.numpy.save_file({"w": np.ones(3, np.float32)}, path, metadata={"a": "b"})
    with pytest.raises(ValueError, match=_corrupt(path, "jaxops.version None, not '1'")):
        jaxops.load_checkpoint(path)


# --------------------------------------------------------------------------- #
# Integrity: the checksum covers the header and the payload
# --------------------------------------------------------------------------- #


def _small_file(tmp_path):
    path = tmp_path / "small.safetensors"
    tree = {"a": np.arange(3, dtype=np.float32), "b": np.arange(4, dtype=np.int8).reshape(2, 2)}
    jaxops.save_checkpoint(path, {**tree, "step": 5})
    return path, path.read_bytes()


def test_every_single_bit_flip_of_the_header_is_detected(tmp_path):
    _, data = _small_file(tmp_path)
    header_end = 8 + int.from_bytes(data[:8], "little")
    bad = tmp_path / "bad.safetensors"
    missed = []
    for index in range(header_end):  # the length prefix and the whole JSON header
        for bit in range(8):
            flipped = bytearray(data)
            flipped[index] ^= 1 << bit
            bad.write_bytes(flipped)
            try:
                jaxops.load_checkpoint(bad)
            except ValueError as e:
                assert str(e).startswith(PREFIX) and repr(str(bad)) in str(e), str(e)
            else:
                missed.append((index, bit))
    assert missed == [], f"{len(missed)} of {8 * header_end} flips loaded"


def test_every_single_bit_flip_of_the_payload_is_detected(tmp_path):
    _, data = _small_file(tmp_path)
    header_end = 8 + int.from_bytes(data[:8], "little")
    bad = tmp_path / "bad.safetensors"
    for index in range(header_end, len(data)):
        for bit in range(8):
            flipped = bytearray(data)
            flipped[index] ^= 1 << bit
            bad.write_bytes(flipped)
            with pytest.raises(ValueError, match=_corrupt(bad, "a corrupt file: the checksum")):
                jaxops.load_checkpoint(bad)


def _set(name, **fields):
    return lambda header: header[name].update(fields)


def _rename(header):
    header["c"] = header.pop("a")
    leaves = header["__metadata__"]["jaxops.leaves"]
    header["__metadata__"]["jaxops.leaves"] = leaves.replace('"a"', '"c"')


def _swap_offsets(header):
    a, d = header["a"], header["d"]
    a["data_offsets"], d["data_offsets"] = d["data_offsets"], a["data_offsets"]


def _int_to_array(header):
    leaves = header["__metadata__"]["jaxops.leaves"]
    header["__metadata__"]["jaxops.leaves"] = leaves.replace('"int"', '"array"')


@pytest.mark.parametrize(
    "edit",
    [
        _set("a", dtype="I32"),  # float32 -> int32: same size, still well formed
        _set("b", shape=[4]),  # [2, 2] -> [4]
        _set("m", shape=[4, 3]),  # [3, 4] -> [4, 3]
        _rename,
        _swap_offsets,  # two equal-size ranges: the tiling still holds
        _int_to_array,  # a Python int would come back as an array
        lambda header: header["__metadata__"].update(note="added"),
    ],
    ids=["dtype", "shape", "transpose", "rename", "swap-offsets", "leaf-kind", "metadata"],
)
def test_well_formed_header_edits_fail_the_checksum(tmp_path, edit):
    path = tmp_path / "c.safetensors"
    tree = {
        "a": np.arange(3, dtype=np.float32),
        "d": np.arange(3, 6, dtype=np.float32),
        "b": np.arange(4, dtype=np.int8).reshape(2, 2),
        "m": np.arange(12, dtype=np.int16).reshape(3, 4),
        "step": 5,
    }
    jaxops.save_checkpoint(path, tree)
    header, payload = _split(path.read_bytes())
    edit(header)
    path.write_bytes(_join(header, payload))
    with pytest.raises(ValueError, match=_corrupt(path, "a corrupt file: the checksum does not")):
        jaxops.load_checkpoint(path)


def test_truncated_oversized_and_foreign_files_are_rejected_naming_the_path(tmp_path):
    _, data = _small_file(tmp_path)
    header_end = 8 + int.from_bytes(data[:8], "little")
    bad = tmp_path / "bad.safetensors"
    for size in (0, 5, 8, 20, header_end - 1, header_end, len(data) - 1):
        bad.write_bytes(data[:size])
        with pytest.raises(ValueError, match=_corrupt(bad, "a truncated file")):
            jaxops.load_checkpoint(bad)
    bad.write_bytes(data + b"\x00")
    with pytest.raises(ValueError, match=_corrupt(bad, "1 bytes past the last entry")):
        jaxops.load_checkpoint(bad)
    bad.write_bytes(b"\x93JAXOPS-SCOPE\n" + bytes(100))  # the format before safetensors
    with pytest.raises(ValueError, match=_corrupt(bad, "a file in jaxops' old scope format")):
        jaxops.load_checkpoint(bad)
    with pytest.raises(ValueError, match=r"^load_scope: expected a jaxops checkpoint"):
        jaxops.load_scope(bad)
    directory = tmp_path / "dir.safetensors"
    directory.mkdir()
    with pytest.raises(IsADirectoryError, match=r"dir.safetensors"):
        jaxops.load_checkpoint(directory)


def test_a_pickle_is_never_unpickled(tmp_path):
    marker = tmp_path / "executed"

    class Exploit:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(ValueError, match=_corrupt(path, "a truncated file")):
        jaxops.load_checkpoint(path)
    np.save(tmp_path / "evil.npy", np.array([Exploit()], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"evil.npy"):
        jaxops.load_checkpoint(tmp_path / "evil.npy")
    assert not marker.exists()


# --------------------------------------------------------------------------- #
# Hostile headers: ValueError naming the path, never another error
# --------------------------------------------------------------------------- #

_META = {"jaxops.version": "1", "jaxops.leaves": '[["w", "array"]]', "jaxops.sha256": "0" * 64}


def _header(entry=None, meta=_META, **extra):
    entry = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]} if entry is None else entry
    return json.dumps({"__metadata__": meta, "w": entry, **extra}).encode()


HOSTILE_HEADERS = {  # header text -> what the message says
    "deep-array": (b"[" * 100_000, "an unreadable header (JSON nested too deeply)"),
    "deep-leaves": (
        _header(meta={**_META, "jaxops.leaves": "[" * 100_000}),
        "an unreadable jaxops.leaves (JSON nested too deeply)",
    ),
    "1e999": (_header().replace(b"[2]", b"[1e999]"), "(the non-integer number 1e999)"),
    "infinity": (_header({"dtype": "F32", "shape": [float("inf")]}), "number Infinity)"),
    "nan": (_header({"dtype": "F32", "shape": [2], "data_offsets": [0, math.nan]}), "number NaN"),
    "huge-dim": (_header({"dtype": "F32", "shape": [0, 2**64], "data_offsets": [0, 0]}), "an inv"),
    "huge-digits": (_header().replace(b"[0, 8]", b"[0, 8" + b"0" * 5000 + b"]"), "an unreadable"),
    "huge-offset": (
        _header({"dtype": "F32", "shape": [2], "data_offsets": [2**64, 2**64 + 8]}),
        "data_offsets for 'w' that leaves a gap before it",
    ),
    "negative-dim": (_header({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}), "invalid "),
    "bool-dim": (_header({"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]}), "invalid "),
    "rank-40": (_header({"dtype": "U8", "shape": [1] * 40, "data_offsets": [0, 1]}), "invalid s"),
    "text-shape": (_header({"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}), "invalid s"),
    "float8": (_header({"dtype": "F8_E4M3", "shape": [8], "data_offsets": [0, 8]}), "unsupported"),
    "object-dtype": (_header({"dtype": "O", "shape": [1], "data_offsets": [0, 8]}), "unsupported"),
    "dtype-list": (_header({"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]}), "unsupp"),
    "no-offsets": (_header({"dtype": "F32", "shape": [2]}), "an entry for 'w' that is not"),
    "extra-field": (_header({"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": 1}), "an"),
    "three-offsets": (_header({"dtype": "F32", "shape": [2], "data_offsets": [0, 4, 8]}), "inv"),
    "entry-list": (_header([]), "an entry for 'w' that is not"),
    "header-list": (b"[1, 2]", "a header that is not a JSON object"),
    "header-null": (b"null", "a header that is not a JSON object"),
    "duplicate-key": (_header()[:-1] + b', "w": {}}', "an unreadable header (a duplicate key"),
    "bad-utf8": (_header().replace(b'"w"', b'"\xff"'), "an unreadable header ('utf-8'"),
    "bad-json": (b'{"__metadata__": {', "an unreadable header (Expecting"),
    "bad-name": (_header().replace(b'"w"', b'"a//b"'), "an invalid name 'a//b'"),
    "metadata-numbers": (_header(meta={"jaxops.version": 1}), "a header without a __metadata__"),
    "no-checksum": (_header(meta={"jaxops.version": "1"}), "a __metadata__ without jaxops.leaves"),
    "leaves-dict": (_header(meta={**_META, "jaxops.leaves": "{}"}), "a jaxops.leaves that is not"),
    "leaves-other": (_header(meta={**_META, "jaxops.leaves": '[["v", "array"]]'}), "a jaxops.lea"),
    "leaves-twice": (
        _header(meta={**_META, "jaxops.leaves": '[["w", "array"], ["w", "array"]]'}),
        "a jaxops.leaves that does not list each tensor once",
    ),
    "leaves-kind": (_header(meta={**_META, "jaxops.leaves": '[["w", "str"]]'}), "a jaxops.leaves"),
    "scalar-shape": (_header(meta={**_META, "jaxops.leaves": '[["w", "float"]]'}), "a Python fl"),
}


@pytest.mark.parametrize("case", HOSTILE_HEADERS, ids=str)
def test_hostile_headers_raise_value_error_naming_the_path(tmp_path, case):
    text, fragment = HOSTILE_HEADERS[case]
    path = tmp_path / "hostile.safetensors"
    path.write_bytes(_join(text, bytes(8)))
    with pytest.raises(ValueError) as info:
        jaxops.load_checkpoint(path)
    assert type(info.value) is ValueError  # not JSONDecodeError, UnicodeDecodeError...
    assert re.match(_corrupt(path), str(info.value)), str(info.value)
    assert fragment in str(info.value).split(", got ", 1)[1], str(info.value)


def test_header_length_fields_that_do_not_fit_the_file_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "hostile.safetensors"
    for length in (2**64 - 1, 2**63, 1000):
        path.write_bytes(length.to_bytes(8, "little") + b"{}")
        with pytest.raises(ValueError, match=_corrupt(path, "a truncated file of 10 bytes")):
            jaxops.load_checkpoint(path)
    # A header over the limit is refused before it is parsed, and never written.
    monkeypatch.setattr(checkpoint, "_MAX_HEADER", 500)
    path.write_bytes(_join(b"!" * 501, bytes(100)))
    with pytest.raises(ValueError, match=_corrupt(path, "a header of 501 bytes, over 500")):
        jaxops.load_checkpoint(path)
    saved = tmp_path / "saved.safetensors"
    with pytest.raises(ValueError, match=r"^save_checkpoint: expected a header of at most 500 by"):
        jaxops.save_checkpoint(saved, {f"leaf_{i}": i for i in range(20)})
    assert sorted(os.listdir(tmp_path)) == ["hostile.safetensors"]


# --------------------------------------------------------------------------- #
# Entries: disjoint, in bounds, exactly covering the payload
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("offsets", "extra", "fragment"),
    [
        ({"b": [0, 12]}, 0, "data_offsets for 'b' that overlaps another entry"),  # an alias
        ({"b": [8, 20]}, 0, "data_offsets for 'b' that overlaps another entry"),
        ({"b": [13, 25]}, 0, "data_offsets for 'b' that leaves a gap before it"),
        ({"a": [4, 16], "b": [16, 28]}, 0, "data_offsets for 'a' that leaves a gap before it"),
        ({"b": [24, 36]}, 0, "data_offsets for 'b' that leaves a gap before it"),  # out of range
        ({}, -4, "a truncated file: its entries need 24 payload bytes, it has 20"),
        ({}, 30, "30 bytes past the last entry"),  # bytes no entry covers
        ({"a": [-12, 0]}, 0, "data_offsets [-12, 0] that do not hold shape [3] of float32 for"),
        ({"a": [12, 0]}, 0, "data_offsets [12, 0] that do not hold"),
        ({"a": [0, 16], "b": [16, 28]}, 0, "data_offsets [0, 16] that do not hold shape [3]"),
    ],
)
def test_entries_must_tile_the_payload(tmp_path, offsets, extra, fragment):
    path = tmp_path / "c.safetensors"
    jaxops.save_checkpoint(path, {"a": np.arange(3.0, dtype=np.float32), "b": np.ones(3, "f4")})
    header, payload = _split(path.read_bytes())
    assert (header["a"]["data_offsets"], header["b"]["data_offsets"]) == ([0, 12], [12, 24])
    for name, value in offsets.items():
        header[name]["data_offsets"] = value
    payload = payload[:extra] if extra < 0 else payload + bytes(extra)
    path.write_bytes(_join(header, payload))
    with pytest.raises(ValueError, match=_corrupt(path, fragment)):
        jaxops.load_checkpoint(path)


def test_zero_size_entries_may_share_an_offset(tmp_path):
    path = tmp_path / "c.safetensors"
    tree = {"e1": np.zeros((0, 3), np.float32), "e2": np.zeros(0, np.int8), "a": np.ones(2)}
    jaxops.save_checkpoint(path, tree)
    header, payload = _split(path.read_bytes())
    header["e1"]["data_offsets"] = header["e2"]["data_offsets"] = [0, 0]  # where "a" starts
    path.write_bytes(_join(header, payload))
    _assert_trees_bit_equal(jaxops.load_checkpoint(path, like=tree), tree)


# --------------------------------------------------------------------------- #
# Memory
# --------------------------------------------------------------------------- #


def _peak_while(fn):
    """``(result or exception, peak bytes allocated)`` while ``fn`` runs."""
    tracemalloc.start()
    try:
        try:
            result = fn()
        except ValueError as e:
            result = e
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_small_crafted_file_cannot_make_the_loader_allocate_more_than_its_size(tmp_path):
    mib = 2**20
    path = tmp_path / "crafted.safetensors"
    crafted = {  # name -> (byte ranges of the entries, payload size)
        # 300 entries aliasing one 1 MiB range (the old loader reached 2.5 GB on 8 MiB)
        "aliases": ([(0, mib)] * 300, mib),
        # one entry claiming 1 TiB in a file of a few hundred bytes
        "claims-too-much": ([(0, 2**40)], 8),
        # well formed, but the checksum fails: the payload is read, once
        "bad-checksum": ([(0, mib)], mib),
    }
    for case, (ranges, payload_size) in crafted.items():
        header = {"__metadata__": {**_META, "jaxops.leaves": "[]"}}
        for i, (begin, end) in enumerate(ranges):
            header[f"e{i}"] = {"dtype": "U8", "shape": [end - begin], "data_offsets": [begin, end]}
        path.write_bytes(_join(header, bytes(payload_size)))
        size = path.stat().st_size
        error, peak = _peak_while(lambda: jaxops.load_checkpoint(path))
        assert isinstance(error, ValueError) and str(error).startswith(PREFIX), case
        assert peak < size + mib, (case, peak, size)


def test_loading_peaks_below_one_and_a_half_times_the_file_size(tmp_path):
    path = tmp_path / "big.safetensors"
    tree = {
        "params": Scope({"w": np.arange(12 * 2**20, dtype=np.float32).reshape(3, -1)}),
        "opt": (np.ones(2**20, np.float64), np.zeros(2**21, jnp.bfloat16)),
        "step": 3,
    }
    jaxops.save_checkpoint(path, tree)
    size = path.stat().st_size
    assert size > 56 * 2**20
    loaded, peak = _peak_while(lambda: jaxops.load_checkpoint(path, like=tree))
    assert peak < 1.5 * size, (peak, size)
    _assert_trees_bit_equal(loaded, tree)


# --------------------------------------------------------------------------- #
# Atomic writes, modes, symlinks, temporary files
# --------------------------------------------------------------------------- #


def test_save_writes_the_temporary_file_beside_the_destination(tmp_path, monkeypatch):
    # os.replace is atomic only within one filesystem: the temporary file must
    # be in the destination's directory, not in the system temporary directory.
    renamed = []
    real_replace = os.replace

    def replace(src, dst):
        renamed.append((os.fspath(src), os.fspath(dst)))
        assert os.path.isfile(src)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.chdir(run)
    for destination in (run / "ckpt.safetensors", "bare.safetensors"):  # absolute, and relative
        renamed.clear()
        jaxops.save_scope(destination, Scope({"w": np.ones(3)}))
        ((src, dst),) = renamed
        workdir = os.path.dirname(os.path.abspath(src))  # private, in the destination's directory
        assert os.path.samefile(os.path.dirname(workdir), run)
        assert re.fullmatch(
            r"\.(ckpt|bare)\.safetensors\.[0-9a-f]{16}\.tmp", os.path.basename(workdir)
        )
        assert os.path.abspath(dst) == os.path.abspath(destination)
    assert sorted(os.listdir(run)) == ["bare.safetensors", "ckpt.safetensors"]


@pytest.mark.skipif(not hasattr(os, "O_DIRECTORY"), reason="no directory fsync on this OS")
def test_save_fsyncs_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        info = os.fstat(fd)
        kind = "dir" if stat.S_ISDIR(info.st_mode) else "file"
        events.append(("fsync", kind, (info.st_dev, info.st_ino), info.st_size))
        real_fsync(fd)

    def replace(src, dst):
        info = os.stat(src)
        events.append(("replace", (info.st_dev, info.st_ino)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    run = tmp_path / "run"
    run.mkdir()
    path = run / "ckpt.safetensors"
    jaxops.save_scope(path, Scope({"w": np.arange(10.0), "b": np.ones(3, np.int8)}))
    monkeypatch.undo()
    written, directory = os.stat(path), os.stat(run)
    file_id, dir_id = (written.st_dev, written.st_ino), (directory.st_dev, directory.st_ino)
    assert [e[:2] for e in events] == [("fsync", "file"), ("replace", file_id), ("fsync", "dir")]
    # The file fsynced is the one renamed, with every byte already written to it.
    assert events[0][2:] == (file_id, written.st_size)
    assert events[2][2] == dir_id  # the destination's directory


def _crashing_save_file(budget):
    """A ``safetensors.numpy.save_file`` that writes ``budget`` bytes, then fails."""

    def save_file(tensors, filename, metadata=None):
        data = safetensors.numpy.save(tensors, metadata=metadata)
        with open(filename, "wb") as f:
            f.write(data[:budget])
        raise OSError(28, "No space left on device (simulated)")

    return save_file


@pytest.mark.parametrize("budget", [3, 100, 5000])
def test_crash_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, budget):
    path = tmp_path / "ckpt.safetensors"
    old = {"w": np.arange(2000, dtype=np.float32)}
    jaxops.save_checkpoint(path, old)
    before = path.read_bytes()
    monkeypatch.setattr(safetensors.numpy, "save_file", _crashing_save_file(budget))
    with pytest.raises(OSError, match=r"simulated"):
        jaxops.save_checkpoint(path, {"w": np.zeros(2000, np.float32), "extra": np.ones(3)})
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["ckpt.safetensors"]  # no stray temporary file
    assert path.read_bytes() == before
    _assert_trees_bit_equal(jaxops.load_checkpoint(path, like=old), old)


def test_crash_before_rename_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "new.safetensors"

    def fail(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(KeyboardInterrupt):
        jaxops.save_scope(path, Scope({"w": np.ones(3)}))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_files_get_the_umask_mode_and_replaced_files_keep_theirs(tmp_path, umask):
    path = tmp_path / "ckpt.safetensors"
    previous = os.umask(umask)
    try:
        jaxops.save_checkpoint(path, {"w": np.ones(3)})
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
        for mode in (0o640, 0o604, 0o444):
            path.chmod(mode)
            jaxops.save_checkpoint(path, {"w": np.zeros(3)})
            assert stat.S_IMODE(path.stat().st_mode) == mode
    finally:
        os.umask(previous)
    assert jaxops.load_checkpoint(path)["w"].tolist() == [0.0, 0.0, 0.0]


def test_a_symlink_destination_is_written_through(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    target = store / "ckpt.safetensors"
    jaxops.save_checkpoint(target, {"w": np.zeros(2)})
    link, chain = tmp_path / "latest", tmp_path / "latest2"
    link.symlink_to(os.path.relpath(target, tmp_path))
    chain.symlink_to("latest")
    for destination, value in ((link, 1.0), (chain, 2.0)):
        jaxops.save_checkpoint(destination, {"w": np.full(2, value)})
        assert link.is_symlink() and chain.is_symlink() and not target.is_symlink()
        assert jaxops.load_checkpoint(target)["w"].tolist() == [value, value]
    dangling = tmp_path / "dangling"
    dangling.symlink_to(store / "new.safetensors")
    jaxops.save_checkpoint(dangling, {"w": 3})
    assert dangling.is_symlink() and jaxops.load_checkpoint(store / "new.safetensors")["w"] == 3
    assert sorted(os.listdir(store)) == ["ckpt.safetensors", "new.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["dangling", "latest", "latest2", "store"]


_KILLED_WRITER = """
import sys, time, numpy as np, safetensors.numpy, jaxops

def stall(tensors, filename, metadata=None):
    with open(filename, "wb") as f:
        f.write(safetensors.numpy.save(tensors, metadata=metadata)[:50])
    print("writing", flush=True)
    time.sleep(60)

safetensors.numpy.save_file = stall
jaxops.save_checkpoint(sys.argv[1], {"w": np.full(3, 9.0)})
"""


def test_temporaries_of_killed_writers_are_removed_and_live_ones_kept(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    jaxops.save_checkpoint(path, {"w": np.zeros(3)})
    before = path.read_bytes()
    # A writer killed with SIGKILL mid-save leaves its temporary file behind.
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(path)], stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout.readline() == b"writing\n"
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    (dead,) = _temporaries(tmp_path)
    assert path.read_bytes() == before
    decoys = [f".other.safetensors.{'0' * 16}.tmp", f".ckpt.safetensors.{'0' * 15}.tmp"]
    for decoy in decoys:
        (tmp_path / decoy).write_bytes(b"")
    # A live writer, paused mid-save in another thread, holds its temporary file.
    started, resume = threading.Event(), threading.Event()
    real_save_file = safetensors.numpy.save_file

    def paused(tensors, filename, metadata=None):
        if threading.current_thread() is writer:
            started.set()
            assert resume.wait(30)
        real_save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.numpy, "save_file", paused)
    writer = threading.Thread(target=jaxops.save_checkpoint, args=(path, {"w": np.full(3, 2.0)}))
    writer.start()
    try:
        assert started.wait(30)
        (live,) = set(_temporaries(tmp_path)) - {dead, *decoys}
        jaxops.save_checkpoint(path, {"w": np.ones(3)})  # removes the dead writer's file only
        assert _temporaries(tmp_path) == sorted([live, *decoys])
    finally:
        resume.set()
        writer.join()
    assert _temporaries(tmp_path) == sorted(decoys)
    assert jaxops.load_checkpoint(path)["w"].tolist() == [2.0, 2.0, 2.0]  # the last rename wins


def test_a_working_directory_removed_before_its_writer_locks_it_is_replaced(tmp_path, monkeypatch):
    # A cleaner may lock and remove a new working directory between its creation
    # and its writer's lock; the writer must notice and make a new, locked one.
    path = tmp_path / "ckpt.safetensors"
    real_flock, real_replace, locked, renamed = fcntl.flock, os.replace, [], []

    def flock(fd, operation):
        if operation == fcntl.LOCK_EX:
            if not locked:
                for name in _temporaries(tmp_path):
                    (tmp_path / name).rmdir()
            locked.append(os.fstat(fd).st_ino)
        return real_flock(fd, operation)

    def replace(src, dst):
        renamed.append(os.stat(os.path.dirname(src)).st_ino)
        real_replace(src, dst)

    monkeypatch.setattr(fcntl, "flock", flock)
    monkeypatch.setattr(os, "replace", replace)
    jaxops.save_checkpoint(path, {"w": np.ones(3)})
    assert len(locked) == 2 and renamed == locked[1:]  # written in the directory it locked
    assert _temporaries(tmp_path) == [] and jaxops.load_checkpoint(path)["w"].sum() == 3


def test_concurrent_writers_and_readers_never_see_a_partial_file(tmp_path):
    path = tmp_path / "ckpt.safetensors"
    states = [{"w": np.full(50_000, float(i)), "i": i} for i in range(2)]
    jaxops.save_checkpoint(path, states[0])
    seen, errors = set(), []

    def write(state):
        for _ in range(15):
            jaxops.save_checkpoint(path, state)

    def read():
        for _ in range(30):
            try:
                loaded = jaxops.load_checkpoint(path, like=states[0])
            except Exception as e:
                errors.append(e)
                return
            assert np.all(loaded["w"] == loaded["i"])
            seen.add(loaded["i"])

    threads = [threading.Thread(target=write, args=(s,)) for s in states]
    threads.append(threading.Thread(target=read))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and seen <= {0, 1}
    assert os.listdir(tmp_path) == ["ckpt.safetensors"]


# --------------------------------------------------------------------------- #
# Fuzz: crafted headers either load consistently or raise the documented error
# --------------------------------------------------------------------------- #

_VALID_NAMES = ["a", "b", "a/b", "c/d/e", "x/0", "step"]
_FUZZ_NAMES = _VALID_NAMES * 3 + ["", "/x", "a//b", "__metadata__", "é"]
_FUZZ_DTYPES = [*checkpoint._DTYPES, "F8_E4M3", "f32", "", "BF16 "]
_ODD_VALUES = st.one_of(
    st.integers(-(2**70), 2**70), st.booleans(), st.none(), st.text(max_size=3),
    st.floats(allow_nan=False, allow_infinity=False), st.lists(st.integers(0, 3), max_size=2),
)  # fmt: skip


@st.composite
def _crafted_files(draw):
    """A header and payload built like jaxops' own, with a few fields made hostile."""
    names = draw(st.lists(st.sampled_from(_FUZZ_NAMES), max_size=4, unique=True))
    header, leaves, chunks, position = {}, [], [], 0
    for name in names:
        code = draw(st.sampled_from(_FUZZ_DTYPES))
        itemsize = checkpoint._DTYPES[code].itemsize if code in checkpoint._DTYPES else 1
        shape = draw(st.lists(st.integers(0, 3), max_size=3))
        size = math.prod(shape) * itemsize
        entry = {"dtype": code, "shape": shape, "data_offsets": [position, position + size]}
        position += size
        chunks.append(draw(st.binary(min_size=size, max_size=size)))
        field = draw(st.sampled_from([None] * 8 + ["dtype", "shape", "data_offsets", "all"]))
        if field == "all":
            entry = draw(_ODD_VALUES)
        elif field == "shape":
            entry["shape"] = draw(st.one_of(_ODD_VALUES, st.lists(_ODD_VALUES, max_size=4)))
        elif field is not None:
            entry[field] = draw(_ODD_VALUES)
        header[name] = entry
        kind = "int" if code == "I64" and shape == [] and draw(st.booleans()) else "array"
        leaves.append([name, draw(st.sampled_from([kind] * 6 + ["float", "str"]))])
    payload = b"".join(chunks) + draw(st.sampled_from([b""] * 6 + [b"\x00"]))
    metadata = {"jaxops.version": "1", "jaxops.leaves": json.dumps(leaves)}
    header = {"__metadata__": metadata, **header}
    try:
        _rehash(header, payload)  # a valid checksum, so the later checks are reached too
    except Exception:
        metadata["jaxops.sha256"] = "0" * 64
    if draw(st.sampled_from([False] * 7 + [True])):
        del metadata[draw(st.sampled_from(sorted(metadata)))]
    text = json.dumps(header).encode()
    if draw(st.sampled_from([False] * 3 + [True])):  # a byte-level splice anywhere in the header
        at = draw(st.integers(0, len(text)))
        text = (
            text[:at]
            + draw(st.binary(min_size=1, max_size=4))
            + text[at + draw(st.integers(0, 4)) :]
        )
    return text, payload


@settings(max_examples=300)
@given(crafted=_crafted_files())
def test_fuzzed_files_load_consistently_or_raise_the_documented_error(crafted, tmp_path_factory):
    text, payload = crafted
    path = tmp_path_factory.getbasetemp() / "fuzz.safetensors"
    path.write_bytes(_join(text, payload))
    try:
        loaded = jaxops.load_checkpoint(path)
    except ValueError as e:
        assert type(e) is ValueError and re.match(_corrupt(path), str(e)), str(e)
        return
    # It loaded: then the header was well formed, and every value is its entry's bytes.
    parsed = json.loads(text)
    entries = {name: entry for name, entry in parsed.items() if name != "__metadata__"}
    assert sum(e["data_offsets"][1] - e["data_offsets"][0] for e in entries.values()) == len(
        payload
    )
    kinds = dict(json.loads(parsed["__metadata__"]["jaxops.leaves"]))
    assert set(loaded.names()) == set(entries) == set(kinds)
    for name, value in loaded.items():
        begin, end = entries[name]["data_offsets"]
        array = np.asarray(value, checkpoint._DTYPES[entries[name]["dtype"]])
        assert list(array.shape) == entries[name]["shape"] and _bits(array) == payload[begin:end]
        assert kinds[name] == "array" or type(value).__name__ == kinds[name]
