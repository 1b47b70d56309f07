"""Train a gated attention classifier on variable-length sequences with jaxops and optax.

The task: each example is a sequence of 1..64 tokens that arrives flat, as rows
of ``values [sum(lengths), D]`` with ``lengths [N]``. A token carries a
"salient" flag, a one-hot type and noise. One to three tokens anywhere in the
sequence are salient and all share the label's type; the other tokens have
random types. The class is the salient tokens' type. Padding is packed with
``pad_value=1.0``, which looks like a salient token of every type, so a model
that lets padding leak into attention or pooling is confused.

Every variable-length step uses jaxops:

* ``pack_rnn_sequence`` turns the flat rows into ``[N, T, D]``;
* ``sequence_mask`` hides padded keys and ``safe_softmax`` normalises;
* a learnable sigmoid gate, broadcast with ``expand``, scales the attention output;
* ``lengths_top_k`` pools each sequence over its top-k per-position scores;
* ``boolean_mask`` / ``boolean_mask_lengths`` select salient positions for the
  diagnostics (mean gate on salient tokens, salient tokens per sequence);
* parameters and optimizer state are ``Scope`` s threaded through a jitted
  ``train_step(params, opt_state, batch) -> (params, opt_state, metrics)``,
  and ``save_scope`` / ``load_scope`` checkpoint the trained parameters.

The per-example model is written for one sequence and ``jax.vmap`` -ed over the batch.

Run: ``python examples/gated_attention.py [--steps N] [--batch-size B] [--seed S]
[--plot PATH] [--checkpoint PATH] [--no-gate]``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxops

MAX_LENGTH = 64
NUM_TYPES = 4
FEATURES = 1 + NUM_TYPES + 3  # salient flag, one-hot type, noise
HIDDEN = 32
TOP_K = 4
PAD_VALUE = 1.0


class Batch(NamedTuple):
    values: jax.Array  # [M, FEATURES] float32, M = batch_size * MAX_LENGTH (rows past sum unused)
    lengths: jax.Array  # [N] int32
    salient: jax.Array  # [M] bool, the salient flag of each flat row
    labels: jax.Array  # [N] int32


# --------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------- #


def make_batch(rng: np.random.Generator, batch_size: int) -> Batch:
    """A batch of the synthetic task, flat, with a static row count (no retracing)."""
    lengths = rng.integers(1, MAX_LENGTH + 1, size=batch_size)
    labels = rng.integers(0, NUM_TYPES, size=batch_size)
    rows = batch_size * MAX_LENGTH
    values = np.zeros((rows, FEATURES), np.float32)
    salient = np.zeros(rows, bool)
    start = 0
    for length, label in zip(lengths, labels, strict=True):
        types = rng.integers(0, NUM_TYPES, size=length)
        num_salient = min(length, rng.integers(1, 4))
        where = rng.choice(length, size=num_salient, replace=False)
        types[where] = label
        flags = np.zeros(length, bool)
        flags[where] = True
        block = values[start : start + length]
        block[:, 0] = flags
        block[np.arange(length), 1 + types] = 1.0
        block[:, 1 + NUM_TYPES :] = rng.standard_normal((length, FEATURES - 1 - NUM_TYPES))
        block += 0.25 * rng.standard_normal(block.shape).astype(np.float32)
        salient[start : start + length] = flags
        start += length
    return Batch(
        jnp.asarray(values), jnp.asarray(lengths, jnp.int32), jnp.asarray(salient),
        jnp.asarray(labels, jnp.int32),
    )  # fmt: skip


# --------------------------------------------------------------------------- #
# Model
# --------------------------------------------------------------------------- #


def init_params(key: jax.Array, *, gate: bool = True) -> jaxops.Scope:
    keys = iter(jax.random.split(key, 8))

    def dense(n_in, n_out):
        return jax.random.normal(next(keys), (n_in, n_out), jnp.float32) / np.sqrt(n_in)

    params = {
        "embed/w": dense(FEATURES, HIDDEN),
        "embed/b": jnp.zeros((HIDDEN,), jnp.float32),
        "attn/w_q": dense(HIDDEN, HIDDEN),
        "attn/w_k": dense(HIDDEN, HIDDEN),
        "attn/w_v": dense(HIDDEN, HIDDEN),
        "score/w": dense(HIDDEN, 1),
        "head/w": dense(HIDDEN, NUM_TYPES),
        "head/b": jnp.zeros((NUM_TYPES,), jnp.float32),
    }
    if gate:
        params["gate/w"] = dense(HIDDEN, 1)
        params["gate/b"] = jnp.zeros((1,), jnp.float32)
    return jaxops.Scope(params)


class ExampleOutput(NamedTuple):
    logits: jax.Array  # [NUM_TYPES]
    gate: jax.Array  # [T] per-position gate (1 without a gate)
    picked: jax.Array  # [TOP_K] positions chosen by the top-k pooling, -1 for none


def example_forward(params: jaxops.Scope, tokens: jax.Array, length: jax.Array) -> ExampleOutput:
    """One sequence: ``tokens [T, FEATURES]`` (padded), ``length`` a scalar."""
    t = tokens.shape[0]
    h = jnp.tanh(tokens @ params["embed/w"] + params["embed/b"][None, :])  # [T, H]
    q, k, v = (h @ params[f"attn/w_{n}"] for n in "qkv")
    logits = (q @ k.T) / np.float32(np.sqrt(HIDDEN))  # [T, T]
    # every query row masks the keys at or past the sequence length
    masked = jaxops.sequence_mask(logits, jnp.broadcast_to(length, (t,)), mode="sequence")
    context = jaxops.safe_softmax(masked, axis=-1) @ v  # [T, H]
    if "gate/w" in params:
        gate = jax.nn.sigmoid(h @ params["gate/w"] + params["gate/b"][None, :])  # [T, 1]
        context = context * jaxops.expand(gate, (-1, HIDDEN))
        gate = gate[:, 0]
    else:
        gate = jnp.ones((t,), jnp.float32)
    y = h + context  # [T, H]
    scores = (y @ params["score/w"])[:, 0]  # [T]
    top = jaxops.lengths_top_k(scores, length[None], k=TOP_K, max_length=t)
    picked = top.indices[0]  # [K], -1 where the sequence is shorter than K
    valid = picked >= 0
    weights = jaxops.safe_softmax(jnp.where(valid, top.values[0], -jnp.inf))  # [K]
    pooled = weights @ jnp.take(y, jnp.maximum(picked, 0), axis=0)  # [H]
    return ExampleOutput(pooled @ params["head/w"] + params["head/b"], gate, picked)


def batch_forward(params: jaxops.Scope, batch: Batch) -> ExampleOutput:
    """The model on a batch: pack the flat rows, then ``vmap`` the per-example model."""
    tokens = jaxops.pack_rnn_sequence(
        batch.values, batch.lengths, max_length=MAX_LENGTH, pad_value=PAD_VALUE, time_major=False
    )
    return jax.vmap(example_forward, in_axes=(None, 0, 0))(params, tokens, batch.lengths)


def loop_forward(params: jaxops.Scope, batch: Batch) -> ExampleOutput:
    """The same model with a Python loop over examples instead of ``vmap`` (for tests)."""
    tokens = jaxops.pack_rnn_sequence(
        batch.values, batch.lengths, max_length=MAX_LENGTH, pad_value=PAD_VALUE, time_major=False
    )
    outs = [example_forward(params, tokens[n], batch.lengths[n]) for n in range(tokens.shape[0])]
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *outs)


def loss_and_metrics(params, batch, forward=batch_forward):
    out = forward(params, batch)
    loss = optax.softmax_cross_entropy_with_integer_labels(out.logits, batch.labels).mean()
    accuracy = jnp.mean((jnp.argmax(out.logits, axis=-1) == batch.labels).astype(jnp.float32))
    # diagnostics with boolean masks: salient tokens per sequence, mean gate on them
    rows = batch.values.shape[0]
    unused = rows - jnp.sum(batch.lengths, dtype=jnp.int32)  # the rows past sum(lengths)
    segments = jnp.concatenate([batch.lengths, unused[None]])
    per_seq = jaxops.boolean_mask_lengths(segments, batch.salient)[:-1]
    gate_flat = jaxops.unpack_rnn_sequence(
        out.gate, batch.lengths, total_length=rows, time_major=False
    )
    salient_gates = jaxops.boolean_mask(gate_flat, batch.salient, size=rows)
    num_salient = jnp.sum(salient_gates.indices >= 0, dtype=jnp.float32)
    num_tokens = jnp.sum(batch.lengths, dtype=jnp.float32)
    metrics = {
        "loss": loss,
        "accuracy": accuracy,
        "salient_per_sequence": jnp.mean(per_seq.astype(jnp.float32)),
        "gate_on_salient": jnp.sum(salient_gates.values) / jnp.maximum(num_salient, 1.0),
        "gate_mean": jnp.sum(gate_flat) / num_tokens,
    }
    return loss, metrics


def make_optimizer(learning_rate: float = 3e-3) -> optax.GradientTransformation:
    return optax.adam(learning_rate)


def make_train_step(optimizer: optax.GradientTransformation, forward=batch_forward):
    """``train_step(params, opt_state, batch) -> (params, opt_state, metrics)``, jitted."""

    @jax.jit
    def train_step(params, opt_state, batch):
        loss_fn = functools.partial(loss_and_metrics, forward=forward)
        grads, metrics = jax.grad(loss_fn, has_aux=True)(params, batch)
        # optax's adam mixes its int32 step count with floats, which strict dtype
        # promotion refuses; jaxops itself runs under either setting.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    return train_step


@jax.jit
def _eval_step(params, batch):
    return loss_and_metrics(params, batch)[1]


def evaluate(params: jaxops.Scope, batches: list[Batch]) -> float:
    accs = [float(_eval_step(params, b)["accuracy"]) for b in batches]
    return float(np.mean(accs))


# --------------------------------------------------------------------------- #
# Driver
# --------------------------------------------------------------------------- #


def _progress(step: int, total: int, metrics: dict, started: float) -> None:
    width = 30
    done = int(width * step / total)
    bar = "#" * done + "-" * (width - done)
    sys.stderr.write(
        f"\r[{bar}] {step}/{total} loss {metrics['loss']:.3f} "
        f"acc {metrics['accuracy']:.3f} {time.perf_counter() - started:.0f}s"
    )
    if step == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def train(steps: int, batch_size: int, seed: int, *, gate: bool = True, progress=True):
    """Trains from scratch; returns the parameters and the per-step history."""
    rng = np.random.default_rng(seed)
    params = init_params(jax.random.key(seed), gate=gate)
    optimizer = make_optimizer()
    opt_state = optimizer.init(params)
    train_step = make_train_step(optimizer)
    history = {"loss": [], "accuracy": []}
    started = time.perf_counter()
    for step in range(1, steps + 1):
        params, opt_state, metrics = train_step(params, opt_state, make_batch(rng, batch_size))
        metrics = {name: float(value) for name, value in metrics.items()}
        history["loss"].append(metrics["loss"])
        history["accuracy"].append(metrics["accuracy"])
        if progress and (step % 10 == 0 or step == steps):
            _progress(step, steps, metrics, started)
    return params, history


def held_out_batches(seed: int, batch_size: int = 256, count: int = 4) -> list[Batch]:
    rng = np.random.default_rng(10_000 + seed)  # disjoint from the training stream
    return [make_batch(rng, batch_size) for _ in range(count)]


def plot(history: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.2))
    steps = np.arange(1, len(history["loss"]) + 1)
    ax_loss.plot(steps, history["loss"], lw=1)
    ax_loss.set(xlabel="step", ylabel="training loss", yscale="log")
    ax_acc.plot(steps, history["accuracy"], lw=1)
    ax_acc.set(xlabel="step", ylabel="training accuracy", ylim=(0, 1.02))
    fig.suptitle("gated attention on variable-length sequences (jaxops)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of the learning curves")
    parser.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="save the trained parameters here; if the file exists, evaluate it without training",
    )
    parser.add_argument("--no-gate", action="store_true", help="ablation: no attention gate")
    args = parser.parse_args(argv)

    gate = not args.no_gate
    if args.checkpoint and os.path.exists(args.checkpoint):
        params = jaxops.load_scope(args.checkpoint, like=init_params(jax.random.key(0), gate=gate))
        print(f"loaded {len(params)} parameter arrays from {args.checkpoint}")
    else:
        started = time.perf_counter()
        params, history = train(args.steps, args.batch_size, args.seed, gate=gate)
        print(f"trained {args.steps} steps in {time.perf_counter() - started:.1f}s")
        if args.plot:
            plot(history, args.plot)
            print(f"learning curves written to {args.plot}")
        if args.checkpoint:
            jaxops.save_scope(args.checkpoint, params)
            print(f"parameters saved to {args.checkpoint}")
    accuracy = evaluate(params, held_out_batches(args.seed))
    print(f"held-out accuracy: {accuracy:.3f}" + ("" if gate else " (no gate)"))
    return accuracy


if __name__ == "__main__":
    main()
