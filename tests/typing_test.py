"""Static typing for users: ``jaxops/py.typed`` and precise public annotations.

One mypy run over a small user program (written to ``tmp_path``, outside the
repository, so that mypy finds jaxops as an *installed* package, which needs
the ``py.typed`` marker) that calls each public function and method under
``reveal_type``. Every revealed type must match the expected one (e.g.
``jax.Array``, ``TopK``) and none may be ``Any``; the program must type-check
cleanly, so the annotations also accept the inputs users pass.

To cover a new public name, add a ``(expression, expected type)`` row to
``CASES``: the expression is one line of the program (it may use the
variables of ``SETUP``), the expected type a regular expression that must
match mypy's revealed type in full.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import jaxops

# Regular expressions for mypy's spelling of the result types.
ARRAY = r"jax\.(?:_src\.basearray\.)?Array"
BUILTIN = r"(?:builtins\.)?"  # mypy >= 1.x spells builtins without the module
INT, BOOL, STR = BUILTIN + "int", BUILTIN + "bool", BUILTIN + "str"
RAGGED = r"jaxops\._src\.ragged\.Ragged"
SCOPE = r"jaxops\._src\.scope\.Scope"
STACK = r"jaxops\._src\.scope\.WorkspaceStack"


def _named_tuple(qualname: str, *fields: str) -> str:
    return rf"tuple\[{', '.join(fields)}, fallback=jaxops\._src\.{re.escape(qualname)}\]"


TOPK = _named_tuple("topk.TopK", ARRAY, ARRAY)
MASKED = _named_tuple("masking.Masked", ARRAY, ARRAY)
PACKED_ROWS = _named_tuple("attention.PackedRows", ARRAY, ARRAY, ARRAY)
SHARDED = _named_tuple("sharding.ShardedRagged", RAGGED, r"numpy\.ndarray\[.*\]")
FUNCTION_TO_ARRAY = rf"def \(.+\) -> {ARRAY}"
FUNCTION_TO_NONE = r"def \((?!.*->).+\)"  # "-> None" is omitted (its result cannot be revealed)

SETUP = """\
import jax.numpy as jnp
import numpy as np

import jaxops

values = jnp.arange(5.0)
lengths = jnp.array([3, 2])
mask = values > 1.0
ids = jnp.array([0, 0, 1, -1, 1])
packed = jnp.zeros((3, 2))
logits = jnp.zeros((2, 3))
top_k = jaxops.lengths_top_k(values, lengths, k=2)
ragged = jaxops.Ragged(values, lengths)
scope = jaxops.Scope({"enc/w": values})
stack = jaxops.create_scope()
sharded = jaxops.shard_ragged(
    np.arange(6.0), np.array([1, 3, 2]), num_shards=2, rows_per_shard=4, seqs_per_shard=2
)
"""

CASES: list[tuple[str, str]] = [
    # sequence
    ("jaxops.pack_rnn_sequence(values, lengths, max_length=3, pad_value=-1.0)", ARRAY),
    ("jaxops.unpack_rnn_sequence(packed, lengths, total_length=5)", ARRAY),
    # top-k
    ("jaxops.lengths_top_k(values, lengths, k=2)", TOPK),
    ("jaxops.lengths_top_k(values, lengths, k=2, max_length=3).values", ARRAY),
    ("top_k.indices", ARRAY),
    ("jaxops.lengths_top_k_gradient(lengths, top_k.indices, top_k.values, data_length=5)", ARRAY),
    ("jaxops.TopK(values, values)", TOPK),
    # broadcast
    ("jaxops.expand(values, (2, 5))", ARRAY),
    ("jaxops.expand_gradient(packed, (2,))", ARRAY),
    # masking
    ("jaxops.boolean_mask(values, mask)", MASKED),
    ("jaxops.boolean_mask(values, mask, size=4, fill_value=0).values", ARRAY),
    ("jaxops.Masked(values, lengths)", MASKED),
    ("jaxops.boolean_mask_gradient(mask, values)", ARRAY),
    ("jaxops.boolean_mask_lengths(lengths, mask)", ARRAY),
    ("jaxops.boolean_unmask([mask, ~mask], [values, np.arange(5.0)], fill_value=0)", ARRAY),
    ("jaxops.sequence_mask(logits, lengths)", ARRAY),
    ("jaxops.sequence_mask(logits, mode='upper', fill_value=0.0)", ARRAY),
    ("jaxops.safe_softmax(logits)", ARRAY),
    ("jaxops.safe_softmax(logits, axis=(0, 1), where=logits > 0)", ARRAY),
    # attention
    ("jaxops.pack_sequences(values, lengths, num_rows=1, row_length=6, pad_value=0)", PACKED_ROWS),
    ("jaxops.pack_sequences(values, lengths, num_rows=1, row_length=6).segment_ids", ARRAY),
    ("jaxops.PackedRows(packed, packed, packed)", PACKED_ROWS),
    ("jaxops.unpack_sequences(jnp.zeros((1, 6)), lengths, total_length=5)", ARRAY),
    ("jaxops.length_mask(lengths, 4)", ARRAY),
    ("jaxops.attention_mask(lengths=lengths, q_len=3, causal=True)", ARRAY),
    ("jaxops.attention_mask(segment_ids=ids, positions=ids, window=(2, 0))", ARRAY),
    # ragged converters and segment ops
    ("jaxops.lengths_to_offsets(lengths)", ARRAY),
    ("jaxops.lengths_to_segment_ids(lengths, total_length=5)", ARRAY),
    ("jaxops.lengths_range_fill(lengths, total_length=5)", ARRAY),
    ("jaxops.segment_ids_to_lengths(ids, num_segments=2)", ARRAY),
    ("jaxops.segment_top_k(values, ids, k=2, num_segments=2)", TOPK),
    ("jaxops.segment_softmax(values, ids, num_segments=2)", ARRAY),
    # Ragged
    ("jaxops.Ragged(np.arange(5.0), np.array([3, 2]))", RAGGED),
    ("jaxops.Ragged.from_list([np.arange(3.0), jnp.arange(2.0)], capacity=6)", RAGGED),
    ("jaxops.Ragged.from_padded(packed, lengths, time_major=True, capacity=5)", RAGGED),
    ("jaxops.Ragged.from_segment_ids(values, ids, num_segments=2)", RAGGED),
    ("ragged.values", ARRAY),
    ("ragged.lengths", ARRAY),
    ("ragged.capacity", INT),
    ("ragged.num_segments", INT),
    ("ragged.offsets()", ARRAY),
    ("ragged.segment_ids()", ARRAY),
    ("ragged.positions()", ARRAY),
    ("ragged.row_mask()", ARRAY),
    ("ragged.length_mask(3)", ARRAY),
    ("ragged.to_padded(max_length=3)", ARRAY),
    ("ragged.to_list()", rf"{BUILTIN}list\[numpy\.ndarray\[.*\]\]"),
    ("ragged.top_k(2)", TOPK),
    ("ragged.boolean_mask(mask)", RAGGED),
    ("ragged.map(lambda v: v * 2)", RAGGED),
    ("ragged.segment_sum()", ARRAY),
    ("ragged.segment_mean()", ARRAY),
    ("ragged.segment_max()", ARRAY),
    ("ragged.softmax()", RAGGED),
    # Scope (its values are Any by design: arrays, tracers or Python scalars)
    ("jaxops.Scope({'enc/w': values, 'step': 0})", SCOPE),
    ("jaxops.Scope.from_nested({'enc': {'w': values}})", SCOPE),
    ("scope.set('enc/b', values)", SCOPE),
    ("scope.update({'enc/b': values})", SCOPE),
    ("scope.remove('enc/w')", SCOPE),
    ("scope.child('enc')", SCOPE),
    ("scope.with_child('dec', scope)", SCOPE),
    ("scope.prefixed('model')", SCOPE),
    ("scope.names()", rf"tuple\[{STR}, \.\.\.\]"),
    ("scope.to_nested()", rf"{BUILTIN}dict\[{STR}, Any\]"),
    # WorkspaceStack
    ("jaxops.WorkspaceStack([scope], top=0)", STACK),
    ("jaxops.create_scope(stack)", STACK),
    ("jaxops.has_scope(stack)", BOOL),
    ("stack.push_forward(scope, {'x': 'enc/w'})", rf"tuple\[{STACK}, {SCOPE}\]"),
    ("stack.pop_gradient(scope, [('x', 'enc/w')])", rf"tuple\[{STACK}, {SCOPE} \| None\]"),
    ("stack.reuse_last_forward(scope)", rf"tuple\[{STACK}, {SCOPE} \| None\]"),
    ("stack.set_top(scope)", STACK),
    ("stack.clear()", STACK),
    ("stack.workspaces", rf"tuple\[{SCOPE}, \.\.\.\]"),
    ("stack.top", INT),
    ("stack.empty", BOOL),
    ("jaxops.do(stack, scope, lambda ws: ws, {'x': 'enc/w'})", rf"tuple\[{STACK}, {SCOPE}\]"),
    ("jaxops.check_bindings_match", FUNCTION_TO_NONE),
    # checkpoints
    ("jaxops.save_checkpoint", FUNCTION_TO_NONE),
    ("jaxops.load_checkpoint('state.safetensors')", SCOPE),
    ("jaxops.save_scope", FUNCTION_TO_NONE),
    ("jaxops.load_scope('params.safetensors', like=scope)", SCOPE),
    # sharding
    ("sharded", SHARDED),
    ("jaxops.ShardedRagged(ragged, np.zeros(2, np.int32))", SHARDED),
    ("sharded.ragged", RAGGED),
    ("sharded.order", r"numpy\.ndarray\[.*\]"),
    # checks: the wrappers keep the wrapped function's signature
    ("jaxops.checked(jaxops.pack_rnn_sequence)", FUNCTION_TO_ARRAY),
    ("jaxops.unchecked(jaxops.expand)(values, (2, 5))", ARRAY),
]

_REVEALED = re.compile(r'^prog\.py:(\d+): note: Revealed type is "(.*)"$')


def _program() -> tuple[str, dict[int, tuple[str, str]]]:
    """The program's text and, by line number, the case each ``reveal_type`` line checks."""
    lines = SETUP.splitlines()
    by_line = {}
    for expression, expected in CASES:
        lines.append(f"reveal_type({expression})")
        by_line[len(lines)] = (expression, expected)
    return "\n".join(lines) + "\n", by_line


def _run_mypy(tmp_path) -> subprocess.CompletedProcess:
    assert importlib.util.find_spec("mypy") is not None, (
        "mypy is a test dependency (pip install -e '.[test]'); this test cannot run without it"
    )
    text, _ = _program()
    (tmp_path / "prog.py").write_text(text)
    # An empty config: the user's defaults, never the repository's [tool.mypy].
    (tmp_path / "mypy.ini").write_text("[mypy]\n")
    env = {k: v for k, v in os.environ.items() if k != "MYPYPATH"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(tmp_path / "mypy.ini"),
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            "--show-error-codes",
            "--no-color-output",
            "prog.py",
        ],
        cwd=tmp_path,  # outside the repository: jaxops is found as an installed package
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_public_results_have_precise_types(tmp_path):
    result = _run_mypy(tmp_path)
    output = result.stdout + result.stderr
    _, by_line = _program()
    revealed = {}
    for line in result.stdout.splitlines():
        match = _REVEALED.match(line)
        if match:
            revealed[int(match.group(1))] = match.group(2)
    assert result.returncode == 0, f"mypy reported errors on the user program:\n{output}"
    assert revealed.keys() == by_line.keys(), f"not every reveal_type was reported:\n{output}"
    failures = []
    for line, (expression, expected) in sorted(by_line.items()):
        got = revealed[line]
        if got == "Any" or not re.fullmatch(expected, got):
            failures.append(f"{expression}\n    revealed: {got}\n    expected: {expected}")
    assert not failures, "imprecise public types:\n" + "\n".join(failures)


def test_py_typed_marker_is_shipped():
    package = os.path.dirname(jaxops.__file__)
    assert os.path.isfile(os.path.join(package, "py.typed"))


def test_every_public_name_is_covered():
    text = SETUP + "\n".join(expression for expression, _ in CASES)
    covered = set(re.findall(r"\bjaxops\.(\w+)", text))
    missing = sorted(set(jaxops.__all__) - covered)
    assert not missing, f"add typing_test CASES rows for: {missing}"
