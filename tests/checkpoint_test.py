"""Tests for jaxops._src.checkpoint: save_scope and load_scope."""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import re
import stat

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxops
from jaxops import Scope

CHECKPOINT_DTYPES = [
    np.bool_, np.int8, np.int32, np.int64, np.uint8, np.float16, jnp.bfloat16, np.float32,
    np.float64,
]  # fmt: skip


def _random(rng, shape, dtype):
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    values = rng.normal(size=shape).astype(dtype)
    if values.size:  # bit-exactness includes NaN and -0.0
        values.reshape(-1)[0] = np.nan
        values.reshape(-1)[-1] = -0.0
    return values


def _bits(a):
    a = np.asarray(a)
    return a.reshape(-1).view(np.uint8).tobytes()


@pytest.mark.parametrize("dtype", CHECKPOINT_DTYPES, ids=lambda d: np.dtype(d).name)
def test_checkpoint_round_trip_is_exact(tmp_path, dtype):
    rng = np.random.default_rng(np.dtype(dtype).num)
    shapes = {"scalar": (), "empty": (0,), "empty2d": (3, 0), "vector": (5,), "a/b/matrix": (2, 3)}
    scope = Scope({name: _random(rng, shape, dtype) for name, shape in shapes.items()})
    path = tmp_path / "ckpt.scope"
    jaxops.save_scope(path, scope)
    loaded = jaxops.load_scope(path, like=scope)
    assert loaded.names() == scope.names()
    for name, value in scope.items():
        got = loaded[name]
        assert isinstance(got, np.ndarray) and got.dtype == np.dtype(dtype)
        assert got.shape == value.shape and _bits(got) == _bits(value)
        assert got.flags.writeable and got.flags.c_contiguous


def test_checkpoint_of_jax_arrays_and_64_bit_values_without_x64(tmp_path):
    with jax.enable_x64(False):
        _check_64_bit_round_trip(tmp_path)


def _check_64_bit_round_trip(tmp_path):
    big = np.array([2**40 + 1, -(2**50)], np.int64)
    precise = np.array([1.0 + 2.0**-40], np.float64)
    scope = Scope(
        {"big": big, "precise": precise, "bf16": jnp.arange(4, dtype=jnp.bfloat16), "py": 3}
    )
    path = str(tmp_path / "x.scope")
    jaxops.save_scope(path, scope)
    loaded = jaxops.load_scope(path)
    assert loaded["big"].dtype == np.int64 and loaded["big"].tolist() == big.tolist()
    assert loaded["precise"].dtype == np.float64 and loaded["precise"][0] == precise[0]
    assert loaded["bf16"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(loaded["bf16"].astype(np.float32), np.arange(4.0))
    assert loaded["py"].dtype == np.int64 and loaded["py"] == 3
    strided = np.arange(12, dtype=np.int32)
    non_contiguous = Scope({"t": strided.reshape(3, 4).T, "s": strided[::3]})
    jaxops.save_scope(path, non_contiguous)
    loaded = jaxops.load_scope(path)
    for name in non_contiguous:
        np.testing.assert_array_equal(loaded[name], non_contiguous[name])
    jaxops.save_scope(path, Scope())
    assert len(jaxops.load_scope(path)) == 0


def test_load_with_like_lists_every_difference(tmp_path):
    path = tmp_path / "ckpt.scope"
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


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.scope"
    with pytest.raises(FileNotFoundError, match=r"^load_scope: expected an existing file, got no"):
        jaxops.load_scope(path)
    with pytest.raises(FileNotFoundError, match=r"nope.scope"):
        jaxops.load_scope(path)


def test_truncated_and_corrupt_files_are_rejected_naming_the_path(tmp_path):
    path = tmp_path / "ckpt.scope"
    jaxops.save_scope(path, Scope({"w": np.arange(100.0), "b": np.ones(3, np.int8)}))
    data = path.read_bytes()
    bad = tmp_path / "bad.scope"
    for size in (0, 5, 20, len(data) // 2, len(data) - 1):
        bad.write_bytes(data[:size])
        with pytest.raises(ValueError, match=r"truncated") as info:
            jaxops.load_scope(bad)
        assert str(info.value).startswith("load_scope: expected a jaxops scope file")
        assert repr(str(bad)) in str(info.value)
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF
    bad.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match=r"checksum does not match"):
        jaxops.load_scope(bad)
    bad.write_bytes(data + b"\x00")
    with pytest.raises(ValueError, match=r"oversized"):
        jaxops.load_scope(bad)
    bad.write_bytes(b"PK\x03\x04 not a scope file at all")
    with pytest.raises(ValueError, match=r"does not start with the jaxops scope signature"):
        jaxops.load_scope(bad)
    header_start = data.index(b"{")
    bad.write_bytes(data[:header_start] + b"[" + data[header_start + 1 :])
    with pytest.raises(ValueError, match=r"unreadable header"):
        jaxops.load_scope(bad)
    for old, new, match in [
        (b'"name": "b"', b'"name": "w"', "the name 'w' twice"),
        (b'"name": "b"', b'"name": "/"', "an invalid name '/'"),
        (b'"dtype": "int8"', b'"dtype": "objec"', "an unsupported dtype 'objec' for 'b'"),
        (b'"shape": [3]', b'"shape": [4]', "an inconsistent entry for 'b'"),
    ]:
        assert data.count(old) == 1
        bad.write_bytes(_rewrite_header(data, old, new))
        with pytest.raises(ValueError, match=match) as info:
            jaxops.load_scope(bad)
        assert repr(str(bad)) in str(info.value)


def _edit_header(data: bytes, edit) -> bytes:
    """The file ``data`` with its parsed JSON header passed through ``edit`` (length fixed up).

    The payload, and so its checksum, is unchanged.
    """
    start = data.index(b"{")
    length = int.from_bytes(data[start - 8 : start], "little")
    header = json.loads(data[start : start + length])
    edit(header)
    text = json.dumps(header).encode("utf-8")
    return data[: start - 8] + len(text).to_bytes(8, "little") + text + data[start + length :]


def test_entries_outside_the_payload_are_rejected_naming_the_path(tmp_path):
    path = tmp_path / "ckpt.scope"
    jaxops.save_scope(path, Scope({"a": np.arange(6, dtype=np.int16), "b": np.ones(3, np.int8)}))
    data = path.read_bytes()
    start = data.index(b"{")
    header = json.loads(data[start : start + int.from_bytes(data[start - 8 : start], "little")])
    assert [(e["name"], e["offset"], e["nbytes"]) for e in header["arrays"]] == [
        ("a", 0, 12),
        ("b", 12, 3),
    ]
    assert header["payload_nbytes"] == 15
    bad = tmp_path / "bad.scope"
    cases = {  # name -> its entry's new fields; every shape still matches nbytes
        "b": [
            {"offset": 13},  # ends one byte past the payload
            {"offset": 15},  # starts at the end
            {"offset": 2**64},  # NumPy would raise OverflowError
            {"shape": [4], "nbytes": 4},  # grows past the end
        ],
        "a": [{"offset": -12}, {"offset": -1}],  # starts before the payload
    }
    for name, edits in cases.items():
        for fields in edits:

            def edit(header, name=name, fields=fields):
                (entry,) = (e for e in header["arrays"] if e["name"] == name)
                entry.update(fields)

            bad.write_bytes(_edit_header(data, edit))
            message = (
                f"load_scope: expected a jaxops scope file (written by save_scope) at "
                f"{str(bad)!r}, got an inconsistent entry for {name!r}."
            )
            with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
                jaxops.load_scope(bad)


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
    for destination in (run / "ckpt.scope", "bare.scope"):  # absolute, and no directory part
        renamed.clear()
        jaxops.save_scope(destination, Scope({"w": np.ones(3)}))
        ((src, dst),) = renamed
        assert os.path.samefile(os.path.dirname(os.path.abspath(src)), run)
        assert os.path.abspath(dst) == os.path.abspath(destination)
    assert sorted(os.listdir(run)) == ["bare.scope", "ckpt.scope"]


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
    path = run / "ckpt.scope"
    jaxops.save_scope(path, Scope({"w": np.arange(10.0), "b": np.ones(3, np.int8)}))
    monkeypatch.undo()
    written, directory = os.stat(path), os.stat(run)
    file_id, dir_id = (written.st_dev, written.st_ino), (directory.st_dev, directory.st_ino)
    assert [e[:2] for e in events] == [("fsync", "file"), ("replace", file_id), ("fsync", "dir")]
    # The file fsynced is the one renamed, with every byte already flushed to it.
    assert events[0][2:] == (file_id, written.st_size)
    assert events[2][2] == dir_id  # the destination's directory


def _rewrite_header(data: bytes, old: bytes, new: bytes) -> bytes:
    """The file ``data`` with ``old`` replaced by ``new`` in its header (length fixed up)."""
    start = data.index(b"{")
    length = int.from_bytes(data[start - 8 : start], "little")
    header = data[start : start + length].replace(old, new)
    return data[: start - 8] + len(header).to_bytes(8, "little") + header + data[start + length :]


def test_a_pickle_is_never_unpickled(tmp_path):
    marker = tmp_path / "executed"

    class Exploit:
        def __reduce__(self):
            return (pathlib.Path.touch, (marker,))

    path = tmp_path / "evil.scope"
    path.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(ValueError, match=r"does not start with the jaxops scope signature"):
        jaxops.load_scope(path)
    np.save(tmp_path / "evil.npy", np.array([Exploit()], dtype=object), allow_pickle=True)
    assert not marker.exists()
    with pytest.raises(ValueError, match=r"evil.npy"):
        jaxops.load_scope(tmp_path / "evil.npy")
    assert not marker.exists()


class _CrashingFile:
    """Wraps a file so that the write crosses ``budget`` bytes, writes part of it, then fails."""

    def __init__(self, f, budget):
        self._f, self._budget = f, budget

    def write(self, data):
        data = memoryview(data).cast("B")
        if len(data) > self._budget:
            self._f.write(data[: self._budget])
            self._f.flush()
            raise OSError(28, "No space left on device (simulated)")
        self._budget -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


@pytest.mark.parametrize("budget", [3, 100, 5000])
def test_crash_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, budget):
    path = tmp_path / "ckpt.scope"
    old = Scope({"w": np.arange(2000, dtype=np.float32)})
    jaxops.save_scope(path, old)
    before = path.read_bytes()
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda *a, **k: _CrashingFile(real_fdopen(*a, **k), budget))
    with pytest.raises(OSError, match=r"simulated"):
        jaxops.save_scope(path, Scope({"w": np.zeros(2000, np.float32), "extra": np.ones(3)}))
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["ckpt.scope"]  # no stray temporary file
    assert path.read_bytes() == before
    np.testing.assert_array_equal(jaxops.load_scope(path)["w"], old["w"])


def test_crash_before_rename_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "new.scope"

    def fail(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(KeyboardInterrupt):
        jaxops.save_scope(path, Scope({"w": np.ones(3)}))
    assert os.listdir(tmp_path) == []


def test_save_scope_errors(tmp_path):
    path = tmp_path / "x.scope"
    with pytest.raises(TypeError, match=r"^save_scope: expected `scope` to be a Scope, got int"):
        jaxops.save_scope(path, 3)
    with pytest.raises(TypeError, match=r"^save_scope: expected a concrete array for 'w', got a"):
        jax.jit(lambda w: jaxops.save_scope(path, Scope({"w": w})))(jnp.ones(2))
    treedef = jax.tree.structure(Scope({"s": 0}))
    with pytest.raises(TypeError, match=r"^save_scope: expected an array of a supported dtype"):
        jaxops.save_scope(path, jax.tree.unflatten(treedef, [np.array(["text"])]))
    assert not path.exists() and os.listdir(tmp_path) == []
