"""Train a gated attention classifier on variable-length sequences with jaxops and optax.

The task is a dictionary lookup with a default, ``entries.get(key, default)``.
Each example is a sequence of 1..64 tokens that arrives flat, as rows of
``values [sum(lengths), D]`` with ``lengths [N]``. A token carries a query flag,
an entry flag, a one-hot key (8 keys), a one-hot value (4 values) and noise.
Anywhere in the sequence sit one *query* token, whose key is looked up and
whose value is the default, and up to three *entries* with distinct keys; the
other tokens are fillers with random keys and values, so a filler can carry the
query's key. In half of the sequences one entry has the query's key and the
class is that entry's value (a hit); otherwise the class is the query's own
value (a miss).

The model embeds every token, selects the entries with ``boolean_mask`` and
packs them per sequence (``boolean_mask_lengths`` counts them), lets every
position attend to its sequence's entries through a multi-head attention
masked with ``sequence_mask`` and normalised with ``safe_softmax``, scales each
head's output by a learnable sigmoid gate (``[T, heads]``, broadcast over the
head's features with ``expand``), adds it to the position's embedding, and
pools each sequence over its top-k per-position scores with ``lengths_top_k``.
Both packings use ``pad_value=1.0``, which makes a padded slot look like a
query and an entry holding every key and every value, so leaked padding would
answer every lookup; the masks keep it out.

Why the gate matters: softmax weights sum to one, so ungated attention always
returns a convex mix of entry values. On a miss with a single entry, the
ungated model receives exactly the context it receives on a hit with that
entry, so it cannot know whether to answer the entry's value or the default:
it is still below 85% after 3000 steps. The gate of head ``h`` at
position ``t`` is ``sigmoid(x_t . w_h + a_h * e_ht + b_h)``, where ``x_t`` is
the position's own embedding and ``e_ht = log(1 + sum_j exp(logit_htj))`` is
the attention evidence, a soft maximum of the query-key match scores (0 with no
entries). It closes on a miss (the held-out run prints its mean at the query on
hits and misses), a state attention alone cannot express. A gate fed only by
the position's own embedding cannot tell a hit from a miss either and does no
better than no gate. ``--no-gate`` removes the gate and keeps everything else.

Every variable-length step uses jaxops:

* ``pack_rnn_sequence`` turns the flat rows into ``[N, T, D]`` tokens and the
  selected entries into ``[N, E, D]``;
* ``boolean_mask`` / ``boolean_mask_lengths`` select the entries (and, for the
  diagnostics, the gate at each query);
* ``sequence_mask`` hides the padded entry slots and ``safe_softmax``
  normalises (a sequence without entries gets a zero context, not NaN);
* a learnable sigmoid gate, broadcast with ``expand``, scales the attention output;
* ``lengths_top_k`` pools each sequence over its top-k per-position scores;
* parameters and optimizer state are ``Scope`` s threaded through a jitted
  ``train_step(params, opt_state, batch) -> (params, opt_state, metrics)``,
  and ``save_checkpoint`` / ``load_checkpoint`` save and restore the whole
  train state (parameters, optimizer state, step) to resume training.

The per-example model is written for one sequence and ``jax.vmap`` -ed over the batch.

Resuming: the batch of step ``s`` is drawn from a generator seeded with
``(seed, s)`` and the learning-rate schedule spans ``--schedule-steps``
whatever ``--steps`` is, so training to step 6 in one run, or to step 3 and
then (with the same ``--checkpoint``) to step 6, gives the same parameters bit
for bit.

Data parallel: ``--devices N`` (N > 1; on CPU the script sets
``--xla_force_host_platform_device_count=N`` before jax starts) splits each
batch into one self-contained block per device with ``shard_ragged`` and runs
the train step under ``jax.shard_map`` over a ``data`` mesh axis: parameters
replicated, the loss reduced over the devices before ``jax.grad``, so the
step's only collectives are all-reduces and it computes what one device does.

Run: ``python examples/gated_attention.py [--steps N] [--batch-size B] [--seed S]
[--plot PATH] [--checkpoint PATH [--save-every K]] [--schedule-steps N]
[--devices N] [--no-gate]``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from typing import NamedTuple

if __name__ == "__main__":  # --devices N: the host device count must be set before jax starts
    _devices = argparse.ArgumentParser(add_help=False)
    _devices.add_argument("--devices", type=int, default=1)
    if _devices.parse_known_args()[0].devices > 1:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")
            + f" --xla_force_host_platform_device_count={_devices.parse_known_args()[0].devices}"
        )

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxops

MAX_LENGTH = 64
MAX_ENTRIES = 3
NUM_KEYS = 8
NUM_VALUES = 4
P_MISS = 0.5  # the share of lookups whose key no entry holds
NOISE = 0.1
KEY, VALUE = 2, 2 + NUM_KEYS  # feature offsets, after the query and entry flags
FEATURES = 2 + NUM_KEYS + NUM_VALUES + 2  # flags, one-hot key, one-hot value, noise
HIDDEN = 32
HEADS = 4
HEAD_DIM = HIDDEN // HEADS
TOP_K = 4
PAD_VALUE = 1.0
SCHEDULE_STEPS = 800  # the learning-rate schedule's length, independent of --steps


class Batch(NamedTuple):
    values: jax.Array  # [M, FEATURES] float32, M = batch_size * MAX_LENGTH (rows past sum unused)
    lengths: jax.Array  # [N] int32
    entry: jax.Array  # [M] bool, the rows that are entries
    query: jax.Array  # [M] bool, the query row of each sequence
    labels: jax.Array  # [N] int32, the matching entry's value, else the query's own value
    hit: jax.Array  # [N] bool, whether an entry has the query's key


# --------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------- #


def batch_rng(seed: int, step: int) -> np.random.Generator:
    """The generator of step ``step``'s training batch: a resumed run draws the same data."""
    return np.random.default_rng((seed, step))


def make_batch(rng: np.random.Generator, batch_size: int) -> Batch:
    """A batch of the synthetic task, flat, with a static row count (no retracing)."""
    lengths = rng.integers(1, MAX_LENGTH + 1, size=batch_size)
    rows = batch_size * MAX_LENGTH
    values = np.zeros((rows, FEATURES), np.float32)
    entry = np.zeros(rows, bool)
    query = np.zeros(rows, bool)
    labels = np.zeros(batch_size, np.int32)
    hit = np.zeros(batch_size, bool)
    start = 0
    for n, length in enumerate(lengths):
        key = rng.integers(NUM_KEYS)
        keys = rng.integers(NUM_KEYS, size=length)  # fillers may carry the query's key
        vals = rng.integers(NUM_VALUES, size=length)
        order = rng.permutation(length)
        where = order[0]  # the query
        entries = order[1 : 1 + min(length - 1, rng.integers(1, MAX_ENTRIES + 1))]
        other_keys = (key + 1 + rng.permutation(NUM_KEYS - 1)) % NUM_KEYS
        keys[where] = key
        labels[n] = vals[where]  # the default
        if len(entries) and rng.random() >= P_MISS:  # a hit: entries[0] holds the key
            keys[entries] = np.concatenate([[key], other_keys])[: len(entries)]
            labels[n] = vals[entries[0]]
            hit[n] = True
        else:
            keys[entries] = other_keys[: len(entries)]
        block = values[start : start + length]
        block[where, 0] = 1.0
        block[entries, 1] = 1.0
        block[np.arange(length), KEY + keys] = 1.0
        block[np.arange(length), VALUE + vals] = 1.0
        block[:, FEATURES - 2 :] = rng.standard_normal((length, 2))
        block += NOISE * rng.standard_normal(block.shape).astype(np.float32)
        entry[start + entries] = True
        query[start + where] = True
        start += length
    return Batch(
        jnp.asarray(values), jnp.asarray(lengths, jnp.int32), jnp.asarray(entry),
        jnp.asarray(query), jnp.asarray(labels), jnp.asarray(hit),
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
        "head/w": dense(HIDDEN, NUM_VALUES),
        "head/b": jnp.zeros((NUM_VALUES,), jnp.float32),
    }
    if gate:
        params["gate/w"] = dense(HIDDEN, HEADS)  # from the position's own embedding
        params["gate/w_evidence"] = jnp.ones((HEADS,), jnp.float32)  # from the attention evidence
        params["gate/b"] = jnp.zeros((HEADS,), jnp.float32)
    return jaxops.Scope(params)


class ExampleOutput(NamedTuple):
    logits: jax.Array  # [NUM_VALUES]
    gate: jax.Array  # [T] per-position gate, mean over heads (1 without a gate)
    picked: jax.Array  # [TOP_K] positions chosen by the top-k pooling, -1 for none


def _embed(params: jaxops.Scope, x: jax.Array) -> jax.Array:
    return jnp.tanh(x @ params["embed/w"] + params["embed/b"][None, :])


def example_forward(
    params: jaxops.Scope,
    tokens: jax.Array,
    length: jax.Array,
    entries: jax.Array,
    num_entries: jax.Array,
) -> ExampleOutput:
    """One sequence: ``tokens [T, FEATURES]`` and ``entries [E, FEATURES]``, padded.

    ``length`` and ``num_entries`` are scalars: how many rows of each are real.
    """
    t, e = tokens.shape[0], entries.shape[0]
    h = _embed(params, tokens)  # [T, H]
    h_entries = _embed(params, entries)  # [E, H]
    q = (h @ params["attn/w_q"]).reshape(t, HEADS, HEAD_DIM)
    k = (h_entries @ params["attn/w_k"]).reshape(e, HEADS, HEAD_DIM)
    v = (h_entries @ params["attn/w_v"]).reshape(e, HEADS, HEAD_DIM)
    # Unscaled dot products: at this size a 1/sqrt(HEAD_DIM) temperature only
    # delays the moment the heads learn to match keys.
    logits = jnp.einsum("thd,ehd->hte", q, k)  # [heads, T, E]
    # every (head, query) row masks the entry slots at or past num_entries
    masked = jaxops.sequence_mask(
        logits, jnp.broadcast_to(num_entries, (HEADS * t,)), mode="sequence", axis=2
    )
    context = jnp.einsum("hte,ehd->thd", jaxops.safe_softmax(masked, axis=-1), v)  # [T, heads, D]
    if "gate/w" in params:
        # evidence = log(1 + sum_j exp(logit_j)): large when some key matches,
        # 0 when none (or when there are no entries at all)
        with_sink = jnp.concatenate([masked, jnp.zeros((HEADS, t, 1), jnp.float32)], axis=-1)
        evidence = jax.nn.logsumexp(with_sink, axis=-1).T  # [T, heads]
        gate = jax.nn.sigmoid(
            h @ params["gate/w"]
            + evidence * params["gate/w_evidence"][None, :]
            + params["gate/b"][None, :]
        )  # [T, heads]
        context = context * jaxops.expand(gate[:, :, None], (-1, -1, HEAD_DIM))
        gate = jnp.mean(gate, axis=1)
    else:
        gate = jnp.ones((t,), jnp.float32)
    y = h + context.reshape(t, HIDDEN)  # [T, H]
    scores = (y @ params["score/w"])[:, 0]  # [T]
    top = jaxops.lengths_top_k(scores, length[None], k=TOP_K, max_length=t)
    picked = top.indices[0]  # [K], -1 where the sequence is shorter than K
    valid = picked >= 0
    weights = jaxops.safe_softmax(jnp.where(valid, top.values[0], -jnp.inf))  # [K]
    pooled = weights @ jnp.take(y, jnp.maximum(picked, 0), axis=0)  # [H]
    return ExampleOutput(pooled @ params["head/w"] + params["head/b"], gate, picked)


def _segments(batch: Batch) -> jax.Array:
    """``lengths`` plus one segment for the unused rows past ``sum(lengths)``."""
    unused = batch.values.shape[0] - jnp.sum(batch.lengths, dtype=jnp.int32)
    return jnp.concatenate([batch.lengths, unused[None]])


def pack(batch: Batch, pad_value: float = PAD_VALUE):
    """Flat rows to ``tokens [N, T, D]``, ``entries [N, E, D]`` and ``num_entries [N]``."""
    tokens = jaxops.pack_rnn_sequence(
        batch.values, batch.lengths, max_length=MAX_LENGTH, pad_value=pad_value, time_major=False
    )
    num_entries = jaxops.boolean_mask_lengths(_segments(batch), batch.entry)[:-1]
    selected = jaxops.boolean_mask(batch.values, batch.entry, size=batch.values.shape[0])
    entries = jaxops.pack_rnn_sequence(
        selected.values, num_entries, max_length=MAX_ENTRIES, pad_value=pad_value, time_major=False
    )
    return tokens, batch.lengths, entries, num_entries


def batch_forward(params: jaxops.Scope, batch: Batch, pad_value: float = PAD_VALUE):
    """The model on a batch: pack the flat rows, then ``vmap`` the per-example model."""
    return jax.vmap(example_forward, in_axes=(None, 0, 0, 0, 0))(params, *pack(batch, pad_value))


def loop_forward(params: jaxops.Scope, batch: Batch, pad_value: float = PAD_VALUE):
    """The same model with a Python loop over examples instead of ``vmap`` (for tests)."""
    packed = pack(batch, pad_value)
    outs = [example_forward(params, *(x[n] for x in packed)) for n in range(len(batch.lengths))]
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *outs)


def loss_and_metrics(params, batch, forward=batch_forward):
    out = forward(params, batch)
    loss = optax.softmax_cross_entropy_with_integer_labels(out.logits, batch.labels).mean()
    accuracy = jnp.mean((jnp.argmax(out.logits, axis=-1) == batch.labels).astype(jnp.float32))
    # diagnostics: the gate at each sequence's query, on hits and on misses
    rows = batch.values.shape[0]
    gate_flat = jaxops.unpack_rnn_sequence(
        out.gate, batch.lengths, total_length=rows, time_major=False
    )
    query_gate = jaxops.boolean_mask(gate_flat, batch.query, size=len(batch.lengths)).values
    hit = batch.hit.astype(jnp.float32)
    metrics = {
        "loss": loss,
        "accuracy": accuracy,
        "query_gate_hit": jnp.sum(query_gate * hit) / jnp.maximum(jnp.sum(hit), 1.0),
        "query_gate_miss": jnp.sum(query_gate * (1.0 - hit)) / jnp.maximum(jnp.sum(1.0 - hit), 1.0),
    }
    return loss, metrics


@functools.cache
def make_optimizer(
    schedule_steps: int = SCHEDULE_STEPS, learning_rate: float = 1e-2
) -> optax.GradientTransformation:
    """Adam with a cosine decay over ``schedule_steps`` (cached: one object per setting)."""
    return optax.adam(
        optax.cosine_decay_schedule(learning_rate, max(schedule_steps, 1), alpha=0.05)
    )


@functools.cache
def make_train_step(optimizer: optax.GradientTransformation, forward=batch_forward):
    """``train_step(params, opt_state, batch) -> (params, opt_state, metrics)``, jitted.

    Cached, so runs with the same optimizer reuse one compiled step.
    """

    @jax.jit
    def train_step(params, opt_state, batch):
        loss_fn = functools.partial(loss_and_metrics, forward=forward)
        grads, metrics = jax.grad(loss_fn, has_aux=True)(params, batch)
        # optax's adam and schedules mix int32 step counts with floats, which
        # strict dtype promotion refuses; jaxops itself runs under either setting.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    return train_step


# --------------------------------------------------------------------------- #
# Data parallel: one self-contained ragged block per device
# --------------------------------------------------------------------------- #


class ShardedBatch(NamedTuple):
    batch: Batch  # blocked: device d holds rows [d*R, (d+1)*R) and sequence slots [d*S, (d+1)*S)
    used: jax.Array  # [D*S] float32, 1 where a slot holds a sequence


def shard_batch(batch: Batch, num_shards: int) -> ShardedBatch:
    """``shard_ragged`` assigns whole sequences to blocks; every other array follows."""
    seqs = -(-len(batch.lengths) // num_shards)
    rows = np.arange(1, batch.values.shape[0] + 1)  # 1-based row numbers: 0 marks padding
    out = jaxops.shard_ragged(
        rows, batch.lengths, num_shards=num_shards, rows_per_shard=seqs * MAX_LENGTH,
        seqs_per_shard=seqs,
    )  # fmt: skip
    source, used = np.asarray(out.ragged.values) - 1, out.order >= 0

    def take(array, index, valid):
        array = np.asarray(array)
        picked = array[np.maximum(index, 0)]
        return np.where(valid.reshape(valid.shape + (1,) * (array.ndim - 1)), picked, 0).astype(
            array.dtype
        )

    blocked = Batch(
        values=take(batch.values, source, source >= 0),
        lengths=np.asarray(out.ragged.lengths),
        entry=take(batch.entry, source, source >= 0),
        query=take(batch.query, source, source >= 0),
        labels=take(batch.labels, out.order, used),
        hit=take(batch.hit, out.order, used),
    )
    return ShardedBatch(blocked, used.astype(np.float32))


@functools.cache
def make_parallel_train_step(optimizer: optax.GradientTransformation, mesh):
    """The train step under ``shard_map``: each device runs the model on its own block.

    The loss is the mean over the real sequences of all devices, reduced with
    ``psum`` *before* ``jax.grad``: the parameters are replicated, so their
    gradient is then the global one on every device (JAX sums the per-device
    contributions), and the step needs nothing but all-reduces.
    """
    spec = jax.sharding.PartitionSpec

    def local_loss(params, sharded):
        out = batch_forward(params, sharded.batch)
        labels, used = sharded.batch.labels, sharded.used > 0
        ce = optax.softmax_cross_entropy_with_integer_labels(out.logits, labels)
        correct = (jnp.argmax(out.logits, axis=-1) == labels).astype(jnp.float32)
        count = jax.lax.psum(jnp.sum(sharded.used), "data")
        loss = jax.lax.psum(jnp.sum(jnp.where(used, ce, 0.0)), "data") / count
        accuracy = jax.lax.psum(jnp.sum(jnp.where(used, correct, 0.0)), "data") / count
        return loss, {"loss": loss, "accuracy": accuracy}

    def step(params, opt_state, sharded):
        grads, metrics = jax.grad(local_loss, has_aux=True)(params, sharded)
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    in_specs = (spec(), spec(), spec("data"))
    return jax.jit(
        jax.shard_map(step, mesh=mesh, in_specs=in_specs, out_specs=(spec(), spec(), spec()))
    )


@jax.jit
def _eval_step(params, batch):
    return loss_and_metrics(params, batch)[1]


def evaluate(params: jaxops.Scope, batches: list[Batch]) -> dict[str, float]:
    """Held-out metrics, averaged over the batches (which have equal sizes)."""
    metrics = [_eval_step(params, b) for b in batches]
    return {name: float(np.mean([m[name] for m in metrics])) for name in metrics[0]}


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


def init_state(seed: int, *, gate: bool = True, schedule_steps: int = SCHEDULE_STEPS) -> dict:
    """The train state at step 0: ``{"params": Scope, "opt_state": optax state, "step": 0}``."""
    params = init_params(jax.random.key(seed), gate=gate)
    return {"params": params, "opt_state": make_optimizer(schedule_steps).init(params), "step": 0}


def train(
    steps: int,
    batch_size: int,
    seed: int,
    *,
    gate: bool = True,
    progress: bool = True,
    schedule_steps: int = SCHEDULE_STEPS,
    state: dict | None = None,
    save=None,
    save_every: int = 0,
    devices: int = 1,
):
    """Trains from ``state`` (default: step 0) up to step ``steps``.

    Calls ``save(state)`` after every ``save_every`` -th step before the last.
    Returns the final state and the history (loss and accuracy) of the steps
    it ran.
    """
    if state is None:
        state = init_state(seed, gate=gate, schedule_steps=schedule_steps)
    optimizer = make_optimizer(schedule_steps)
    params, opt_state, first = state["params"], state["opt_state"], state["step"] + 1
    if devices > 1:  # data parallel: replicated state, one block of each batch per device
        mesh = jax.make_mesh((devices,), ("data",))
        spec = jax.sharding.PartitionSpec
        replicated = jax.sharding.NamedSharding(mesh, spec())
        blocks = jax.sharding.NamedSharding(mesh, spec("data"))
        params, opt_state = jax.device_put((params, opt_state), replicated)
        parallel_step = make_parallel_train_step(optimizer, mesh)

        def train_step(params, opt_state, batch):
            sharded = jax.device_put(shard_batch(batch, devices), blocks)
            return parallel_step(params, opt_state, sharded)

    else:
        train_step = make_train_step(optimizer)
    history = {"loss": [], "accuracy": []}
    started = time.perf_counter()
    for step in range(first, steps + 1):
        batch = make_batch(batch_rng(seed, step), batch_size)
        params, opt_state, metrics = train_step(params, opt_state, batch)
        metrics = {name: float(value) for name, value in metrics.items()}
        history["loss"].append(metrics["loss"])
        history["accuracy"].append(metrics["accuracy"])
        state = {"params": params, "opt_state": opt_state, "step": step}
        if save is not None and save_every and step % save_every == 0 and step < steps:
            save(jax.device_get(state))
        if progress and (step % 10 == 0 or step == steps):
            _progress(step, steps, metrics, started)
    # Host arrays: saved, evaluated or resumed anywhere, whatever the devices.
    return jax.device_get(state), history


def held_out_batches(seed: int, batch_size: int = 256, count: int = 4) -> list[Batch]:
    rng = np.random.default_rng(10_000 + seed)  # disjoint from the training stream
    return [make_batch(rng, batch_size) for _ in range(count)]


def plot(history: dict, path: str, first_step: int = 1) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.2))
    steps = np.arange(first_step, first_step + len(history["loss"]))
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
    parser.add_argument("--steps", type=int, default=800, help="train up to this step")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of the learning curves")
    parser.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="save the train state here; if the file exists, resume from it",
    )
    parser.add_argument(
        "--save-every", type=int, default=100, metavar="K", help="with --checkpoint: every K steps"
    )
    parser.add_argument("--schedule-steps", type=int, default=SCHEDULE_STEPS)
    parser.add_argument(
        "--devices", type=int, default=1, metavar="N", help="data parallel over N devices"
    )
    parser.add_argument("--no-gate", action="store_true", help="ablation: no attention gate")
    args = parser.parse_args(argv)
    if args.devices > jax.device_count():
        parser.error(
            f"--devices {args.devices}: jax sees {jax.device_count()} device(s) (on CPU, run "
            "this script directly: it sets the host device count before jax starts)"
        )
    if args.devices < 1 or args.batch_size % args.devices:
        parser.error(
            f"--batch-size {args.batch_size} must be a multiple of --devices {args.devices}"
        )

    gate = not args.no_gate
    # Saved beside the state: resuming with other settings would not continue the same run.
    config = {
        "seed": args.seed,
        "batch_size": args.batch_size,
        "schedule_steps": args.schedule_steps,
        "gate": gate,
    }
    state = init_state(args.seed, gate=gate, schedule_steps=args.schedule_steps)
    if args.checkpoint and os.path.exists(args.checkpoint):
        saved = jaxops.load_checkpoint(args.checkpoint, like={**state, "config": config})
        saved_config = saved.pop("config")
        if saved_config != config:
            parser.error(f"{args.checkpoint} was written with {saved_config}, not {config}")
        state = saved
        print(f"resumed from step {state['step']} of {args.checkpoint}")

    def save(state):
        jaxops.save_checkpoint(args.checkpoint, {**state, "config": config})

    first = state["step"] + 1
    if first <= args.steps:
        started = time.perf_counter()
        state, history = train(
            args.steps, args.batch_size, args.seed, gate=gate, schedule_steps=args.schedule_steps,
            state=state, save=save if args.checkpoint else None, save_every=args.save_every,
            devices=args.devices,
        )  # fmt: skip
        where = f" on {args.devices} devices (data parallel)" if args.devices > 1 else ""
        print(
            f"trained {args.steps - first + 1} steps{where} in {time.perf_counter() - started:.1f}s"
        )
        if args.plot:
            plot(history, args.plot, first_step=first)
            print(f"learning curves written to {args.plot}")
        if args.checkpoint:
            save(state)
            print(f"train state at step {state['step']} saved to {args.checkpoint}")
    else:
        print(
            f"nothing to train: the train state is at step {state['step']} (--steps {args.steps})"
        )
    metrics = evaluate(state["params"], held_out_batches(args.seed))
    if gate:
        print(
            f"mean gate at the query: {metrics['query_gate_hit']:.2f} on hits, "
            f"{metrics['query_gate_miss']:.2f} on misses"
        )
    accuracy = metrics["accuracy"]
    print(f"held-out accuracy: {accuracy:.3f}" + ("" if gate else " (no gate)"))
    return accuracy


if __name__ == "__main__":
    main()
