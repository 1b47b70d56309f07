"""Train a small causal transformer language model on packed documents with jaxops and optax.

The corpus is an endless stream of short synthetic documents, each learnable
only from its own tokens. A document starts with a key token naming its rule
and then follows that rule with fresh random choices (16 symbols):

* copy: ``COPY x1 .. xp SEP x1 .. xp``, with ``p`` distinct random symbols
  (``1 <= p <= 16``);
* reversal: ``REVERSE x1 .. xp SEP xp .. x1``;
* arithmetic: ``ARITHMETIC a a+s a+2s ...`` mod 16, with a random start ``a``,
  a random step ``s`` in ``1..15`` and 3..47 terms.

Documents are 4..48 tokens long (copy and reversal 4..34), so packing matters.
A position is *predictable* when the next token of its document is determined
by the rule and the tokens the document has shown so far: for copy and
reversal, the separator and every later position but the last (the separator
fixes ``p``, so the whole second half follows); for arithmetic, the second term
and every later position but the last (``a`` and ``a+s`` fix the step). The
key, the prefix symbols, where the separator falls, ``a`` and ``s`` are random
and never predictable. The script reports the next-token accuracy at the
predictable positions of held-out documents.

The recipe, all of it in jaxops:

1. The documents arrive flat (``tokens [M]``, ``lengths [N]``);
   ``pack_sequences`` places them whole, next-fit, into ``R x L`` rows
   (default 8 x 128) and returns ``PackedRows(values, segment_ids,
   positions)``. Each step takes as many documents as fit: the candidates are
   packed under ``jit``, where the document that would open row ``R + 1`` and
   all after it are dropped (their ids appear nowhere); they wait for the next
   step.
2. ``attention_mask(segment_ids=..., positions=..., causal=True)`` lets a slot
   attend only to itself and the earlier slots of its own document, and
   ``safe_softmax(where=mask)`` normalises the attention (padding slots attend
   nothing and get zeros, not NaN).
3. The position embedding reads the packed ``positions`` (the place within the
   document), so a document packed at slot 70 looks exactly as it would at
   slot 0.
4. The next-token target of a slot is the next slot only when that holds the
   same document (equal ``segment_ids``): no loss crosses a boundary.
5. Each slot also embeds the two previous tokens *of its own document* (a
   short causal convolution, the "token shift" of RWKV- and Mamba-style
   models), cut at document boundaries with the same ``segment_ids``. It lets
   a two-layer model learn the copy and reversal rules within a minute on a
   CPU; ``--no-token-shift`` removes it (measured: the plain transformer
   learns the arithmetic rule, but after the default 800 steps it is near 0.2
   on copy and reversal, about 0.7 overall).

Parameters and optimizer state are ``Scope`` s threaded through a jitted
``train_step(params, opt_state, rows) -> (params, opt_state, metrics)``.

The script prints the packing efficiency (the fraction of slots that hold a
token) against one document per row padded to 48 slots, and the held-out
accuracy last. ``--compare-padding`` also trains the same model, from the same
initial parameters, on the same documents in one-document-per-row batches
(``pack_rnn_sequence``, ``length_mask``, the same mask and loss) and reports
the real tokens per second of both runs, measured from the second step on (the
first compiles), data preparation included.

Measured on a shared, busy 2-core CPU: the default run takes 35-55 s with
compilation and reaches 0.998-1.000 held-out accuracy for seeds 0-4, with a
packing efficiency of 0.90 against 0.44; ``--compare-padding`` measured
24-33k tokens/s packed against 15-17k padded (1.7-2.3x across runs, which
share the machine; the train step alone, timed interleaved, is 2.0x faster
per real token packed).

Run: ``python examples/packed_lm.py [--steps N] [--rows R] [--row-length L]
[--seed S] [--plot PATH] [--compare-padding [--padded-batch-size B]]
[--no-token-shift]``.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import sys
import time
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxops

NUM_SYMBOLS = 16  # content tokens 0..15
SEP = NUM_SYMBOLS
COPY, REVERSE, ARITHMETIC = NUM_SYMBOLS + 1, NUM_SYMBOLS + 2, NUM_SYMBOLS + 3
PAD = NUM_SYMBOLS + 4  # padding slots, and "no previous token" for the token shift
VOCAB = NUM_SYMBOLS + 5
RULES = {"copy": COPY, "reversal": REVERSE, "arithmetic": ARITHMETIC}  # rule: key token
MIN_LENGTH, MAX_LENGTH = 4, 48
SHIFT = 2  # how many previous tokens each slot embeds

WIDTH = 64
HEADS = 4
HEAD_DIM = WIDTH // HEADS
LAYERS = 2
MLP_WIDTH = 4 * WIDTH

STEPS = 800
ROWS = 8
ROW_LENGTH = 128
LEARNING_RATE = 1e-2
EVAL_DOCUMENTS = 2000


# --------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------- #


class Document(NamedTuple):
    tokens: np.ndarray  # [n] int32
    predictable: np.ndarray  # [n] bool: the next token is determined (see the docstring)


def make_document(rng: np.random.Generator) -> Document:
    """One document: a key token naming its rule, then the rule with fresh random choices."""
    rule = list(RULES)[rng.integers(len(RULES))]
    if rule == "arithmetic":  # a progression mod NUM_SYMBOLS
        length = int(rng.integers(MIN_LENGTH, MAX_LENGTH + 1))
        start, step = rng.integers(NUM_SYMBOLS), rng.integers(1, NUM_SYMBOLS)
        terms = (start + step * np.arange(length - 1)) % NUM_SYMBOLS
        tokens = np.concatenate([[RULES[rule]], terms])
        first = 2  # the second term fixes the step
    else:  # copy or reversal of p distinct symbols
        p = int(rng.integers(1, min(NUM_SYMBOLS, (MAX_LENGTH - 2) // 2) + 1))
        prefix = rng.choice(NUM_SYMBOLS, p, replace=False)
        second = prefix if rule == "copy" else prefix[::-1]
        tokens = np.concatenate([[RULES[rule]], prefix, [SEP], second])
        first = p + 1  # the separator fixes p
    predictable = np.zeros(len(tokens), bool)
    predictable[first : len(tokens) - 1] = True
    return Document(tokens.astype(np.int32), predictable)


def document_stream(seed: int, *, held_out: bool = False) -> Iterator[Document]:
    """Endless documents; the held-out stream uses a generator disjoint from training."""
    rng = np.random.default_rng((seed, int(held_out)))
    while True:
        yield make_document(rng)


def flatten(documents: list[Document], *, capacity: int, max_documents: int):
    """``tokens [capacity]``, ``predictable [capacity]``, ``lengths [max_documents]``.

    Static sizes, so the jitted packing compiles once; unused documents have
    length 0 and unused rows are padding.
    """
    tokens = np.full(capacity, PAD, np.int32)
    predictable = np.zeros(capacity, bool)
    lengths = np.zeros(max_documents, np.int32)
    start = 0
    for n, doc in enumerate(documents):
        tokens[start : start + len(doc.tokens)] = doc.tokens
        predictable[start : start + len(doc.tokens)] = doc.predictable
        lengths[n] = len(doc.tokens)
        start += len(doc.tokens)
    return tokens, predictable, lengths


class Rows(NamedTuple):
    """A batch of rows, packed or one document per row: every array ``[B, T]``."""

    tokens: jax.Array  # int32, PAD on padding
    predictable: jax.Array  # bool
    segment_ids: jax.Array  # int32, the document's index in the batch, -1 on padding
    positions: jax.Array  # int32, the place within the document, -1 on padding


class Batch(NamedTuple):
    rows: Rows
    num_documents: int


@functools.partial(jax.jit, static_argnames=("num_rows", "row_length"))
def pack_rows(tokens, predictable, lengths, *, num_rows: int, row_length: int) -> Rows:
    """``pack_sequences`` of the flat documents (under jit: what does not fit is dropped)."""
    pack = functools.partial(jaxops.pack_sequences, num_rows=num_rows, row_length=row_length)
    packed = pack(tokens, lengths, pad_value=PAD)
    return Rows(packed.values, pack(predictable, lengths).values, *packed[1:])


@functools.partial(jax.jit, static_argnames=("max_length",))
def pad_rows(tokens, predictable, lengths, *, max_length: int = MAX_LENGTH) -> Rows:
    """One document per row, padded to ``max_length`` (``pack_rnn_sequence``, ``length_mask``)."""
    pad = functools.partial(jaxops.pack_rnn_sequence, max_length=max_length, time_major=False)
    inside = jaxops.length_mask(lengths, max_length)  # [N, T]
    n = jnp.arange(lengths.shape[0], dtype=jnp.int32)[:, None]
    t = jnp.arange(max_length, dtype=jnp.int32)[None, :]
    return Rows(
        pad(tokens, lengths, pad_value=PAD),
        pad(predictable, lengths),
        jnp.where(inside, n, -1),
        jnp.where(inside, t, -1),
    )


def packed_batches(
    documents: Iterable[Document], *, num_rows: int, row_length: int
) -> Iterator[Batch]:
    """Batches of ``num_rows x row_length`` slots holding as many whole documents as fit.

    The candidates are the next documents up to one longest document past the
    slots; ``pack_rows`` keeps those next-fit places in the rows (a prefix of
    the candidates), and the rest are offered again in the next batch.
    """
    documents = iter(documents)
    slots = num_rows * row_length
    capacity = slots + MAX_LENGTH
    max_documents = capacity // MIN_LENGTH
    pending: list[Document] = []
    waiting = 0  # tokens in pending
    while True:
        while waiting < slots and (doc := next(documents, None)) is not None:
            pending.append(doc)
            waiting += len(doc.tokens)
        if not pending:
            return
        flat = flatten(pending, capacity=capacity, max_documents=max_documents)
        rows = pack_rows(*flat, num_rows=num_rows, row_length=row_length)
        placed = np.unique(np.asarray(rows.segment_ids))
        count = len(placed) - (placed[0] < 0)
        if count == 0 or placed[-1] != count - 1:
            raise RuntimeError(f"expected the first documents to be placed, got ids {placed}")
        yield Batch(rows, count)
        waiting -= sum(len(doc.tokens) for doc in pending[:count])
        del pending[:count]


def padded_batches(documents: Iterable[Document], *, batch_size: int) -> Iterator[Batch]:
    """Batches of ``batch_size`` documents, one per row (the last one filled with empty rows)."""
    documents = iter(documents)
    while chunk := list(itertools.islice(documents, batch_size)):
        flat = flatten(chunk, capacity=batch_size * MAX_LENGTH, max_documents=batch_size)
        yield Batch(pad_rows(*flat), len(chunk))


# --------------------------------------------------------------------------- #
# Model
# --------------------------------------------------------------------------- #


def init_params(key: jax.Array, *, token_shift: bool = True) -> jaxops.Scope:
    keys = iter(jax.random.split(key, 3 + SHIFT + 4 * LAYERS))

    def dense(n_in, n_out, scale=1.0):
        std = np.float32(scale / np.sqrt(n_in))
        return std * jax.random.normal(next(keys), (n_in, n_out), jnp.float32)

    def embedding(rows):
        return 0.5 * jax.random.normal(next(keys), (rows, WIDTH), jnp.float32)

    ones, zeros = jnp.ones((WIDTH,), jnp.float32), jnp.zeros((WIDTH,), jnp.float32)
    params = {
        "embed/tokens": embedding(VOCAB),
        "embed/positions": embedding(MAX_LENGTH),
        "final_norm/scale": ones,
        "final_norm/bias": zeros,
        "unembed": dense(WIDTH, VOCAB),
    }
    if token_shift:
        for back in range(1, SHIFT + 1):
            params[f"embed/previous_{back}"] = embedding(VOCAB)
    residual = 1.0 / np.sqrt(2 * LAYERS)  # the residual branches start small
    for i in range(LAYERS):
        params |= {
            f"layer{i}/attn_norm/scale": ones,
            f"layer{i}/attn_norm/bias": zeros,
            f"layer{i}/attn/w_qkv": dense(WIDTH, 3 * WIDTH),
            f"layer{i}/attn/w_out": dense(WIDTH, WIDTH, residual),
            f"layer{i}/mlp_norm/scale": ones,
            f"layer{i}/mlp_norm/bias": zeros,
            f"layer{i}/mlp/w_in": dense(WIDTH, MLP_WIDTH),
            f"layer{i}/mlp/b_in": jnp.zeros((MLP_WIDTH,), jnp.float32),
            f"layer{i}/mlp/w_out": dense(MLP_WIDTH, WIDTH, residual),
            f"layer{i}/mlp/b_out": zeros,
        }
    return jaxops.Scope(params)


def _layer_norm(params: jaxops.Scope, name: str, x: jax.Array) -> jax.Array:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    scale, bias = _features(params[f"{name}/scale"]), _features(params[f"{name}/bias"])
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * scale + bias


def _features(v: jax.Array) -> jax.Array:
    """A ``[F]`` vector as ``[1, 1, F]``, to broadcast against ``[B, T, F]`` explicitly."""
    return v[None, None, :]


def previous_tokens(tokens: jax.Array, segment_ids: jax.Array, k: int) -> jax.Array:
    """The token ``k`` slots back in the same document, ``PAD`` where there is none."""
    b = tokens.shape[0]
    same = (segment_ids[:, k:] == segment_ids[:, :-k]) & (segment_ids[:, k:] >= 0)
    shifted = jnp.where(same, tokens[:, :-k], PAD)
    return jnp.concatenate([jnp.full((b, k), PAD, jnp.int32), shifted], axis=1)


def forward(
    params: jaxops.Scope,
    tokens: jax.Array,
    positions: jax.Array,
    segment_ids: jax.Array,
    mask: jax.Array,
) -> jax.Array:
    """Next-token logits ``[B, T, VOCAB]`` of rows ``[B, T]``, attention limited by ``mask``.

    ``mask [B, T, T]`` is :func:`document_mask` in training; the tests pass
    others. ``segment_ids`` cut the token shift at document boundaries.
    """
    b, t = tokens.shape
    x = params["embed/tokens"][tokens] + params["embed/positions"][jnp.maximum(positions, 0)]
    for back in range(1, SHIFT + 1):
        if f"embed/previous_{back}" in params:
            x = x + params[f"embed/previous_{back}"][previous_tokens(tokens, segment_ids, back)]
    for i in range(LAYERS):
        h = _layer_norm(params, f"layer{i}/attn_norm", x)
        qkv = (h @ params[f"layer{i}/attn/w_qkv"]).reshape(b, t, 3, HEADS, HEAD_DIM)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, T, heads, D]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * np.float32(1 / np.sqrt(HEAD_DIM))
        weights = jaxops.safe_softmax(logits, where=mask[:, None])  # [B, heads, T, T]
        attended = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, WIDTH)
        x = x + attended @ params[f"layer{i}/attn/w_out"]
        h = _layer_norm(params, f"layer{i}/mlp_norm", x)
        h = jax.nn.gelu(h @ params[f"layer{i}/mlp/w_in"] + _features(params[f"layer{i}/mlp/b_in"]))
        x = x + h @ params[f"layer{i}/mlp/w_out"] + _features(params[f"layer{i}/mlp/b_out"])
    return _layer_norm(params, "final_norm", x) @ params["unembed"]


def document_mask(rows: Rows) -> jax.Array:
    """``[B, T, T]``: each slot attends to itself and the earlier slots of its document."""
    return jaxops.attention_mask(
        segment_ids=rows.segment_ids, positions=rows.positions, causal=True
    )


def logits_of(params: jaxops.Scope, rows: Rows) -> jax.Array:
    return forward(params, rows.tokens, rows.positions, rows.segment_ids, document_mask(rows))


def loss_and_metrics(params: jaxops.Scope, rows: Rows):
    """Mean next-token cross entropy within documents, and the counts behind the accuracy."""
    logits = logits_of(params, rows)[:, :-1]
    targets = rows.tokens[:, 1:]
    ids = rows.segment_ids
    has_target = (ids[:, 1:] == ids[:, :-1]) & (ids[:, :-1] >= 0)  # the next slot, same document
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    count = jnp.sum(has_target, dtype=jnp.float32)
    loss = jnp.sum(jnp.where(has_target, ce, 0.0)) / jnp.maximum(count, 1.0)
    scored = rows.predictable[:, :-1] & has_target
    correct = (jnp.argmax(logits, axis=-1) == targets) & scored
    metrics = {
        "loss": loss,
        "correct": jnp.sum(correct, dtype=jnp.float32),
        "scored": jnp.sum(scored, dtype=jnp.float32),
        "tokens": jnp.sum(ids >= 0, dtype=jnp.float32),
    }
    return loss, metrics


def make_optimizer(steps: int, learning_rate: float = LEARNING_RATE):
    """AdamW with a short warmup and a cosine decay over ``steps``, clipped at norm 1."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, min(50, steps // 10 + 1), max(steps, 2), end_value=0.05 * learning_rate
    )
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))


def make_train_step(optimizer: optax.GradientTransformation):
    """``train_step(params, opt_state, rows) -> (params, opt_state, metrics)``, jitted."""

    @jax.jit
    def train_step(params, opt_state, rows):
        grads, metrics = jax.grad(loss_and_metrics, has_aux=True)(params, rows)
        # optax's adamw and schedules mix int32 step counts with floats, which
        # strict dtype promotion refuses; jaxops itself runs under either setting.
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, metrics

    return train_step


@jax.jit
def _eval_step(params, rows):
    return loss_and_metrics(params, rows)[1]


def evaluate(params: jaxops.Scope, batches: Iterable[Batch]) -> float:
    """Next-token accuracy at the predictable positions of the batches' documents."""
    correct = scored = 0.0
    for batch in batches:
        metrics = _eval_step(params, batch.rows)
        correct += float(metrics["correct"])
        scored += float(metrics["scored"])
    return correct / max(scored, 1.0)


# --------------------------------------------------------------------------- #
# Driver
# --------------------------------------------------------------------------- #


class Run(NamedTuple):
    params: jaxops.Scope
    history: dict  # per step: loss, accuracy (predictable positions), documents (cumulative)
    steps: int
    documents: int
    tokens: int  # real tokens trained on
    slots: int  # slots the batches held
    seconds: float  # wall time from the second step on (the first compiles)
    timed_tokens: int  # real tokens from the second step on

    @property
    def tokens_per_second(self) -> float:
        return self.timed_tokens / self.seconds if self.seconds > 0 else float("nan")


def _progress(label, step, total, metrics, started) -> None:
    width = 30
    done = int(width * step / total)
    accuracy = metrics["correct"] / max(metrics["scored"], 1.0)
    sys.stderr.write(
        f"\r{label} [{'#' * done}{'-' * (width - done)}] {step}/{total} "
        f"loss {metrics['loss']:.3f} acc {accuracy:.3f} {time.perf_counter() - started:.0f}s"
    )
    if step == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def train(
    batches: Iterable[Batch],
    steps: int,
    seed: int,
    *,
    learning_rate: float = LEARNING_RATE,
    token_shift: bool = True,
    progress: bool = True,
    label: str = "packed",
) -> Run:
    """Trains for ``steps`` batches (fewer if ``batches`` runs out) from ``init_params(seed)``."""
    params = init_params(jax.random.key(seed), token_shift=token_shift)
    optimizer = make_optimizer(steps, learning_rate)
    opt_state = optimizer.init(params)
    train_step = make_train_step(optimizer)
    history = {"loss": [], "accuracy": [], "documents": []}
    documents = tokens = slots = timed_tokens = step = 0
    started = timed_from = time.perf_counter()
    for step, batch in enumerate(itertools.islice(batches, steps), start=1):
        params, opt_state, metrics = train_step(params, opt_state, batch.rows)
        metrics = {name: float(value) for name, value in metrics.items()}
        documents += batch.num_documents
        tokens += int(metrics["tokens"])
        slots += batch.rows.tokens.size
        if step == 1:
            timed_from = time.perf_counter()
        else:
            timed_tokens += int(metrics["tokens"])
        history["loss"].append(metrics["loss"])
        history["accuracy"].append(metrics["correct"] / max(metrics["scored"], 1.0))
        history["documents"].append(documents)
        if progress and (step % 10 == 0 or step == steps):
            _progress(label, step, steps, metrics, started)
    seconds = time.perf_counter() - timed_from if step > 1 else 0.0
    return Run(params, history, step, documents, tokens, slots, seconds, timed_tokens)


def held_out_accuracy(
    params: jaxops.Scope, seed: int, *, documents: int, rows: int, row_length: int
):
    held_out = itertools.islice(document_stream(seed, held_out=True), documents)
    return evaluate(params, packed_batches(held_out, num_rows=rows, row_length=row_length))


def plot(runs: dict[str, Run], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, run in runs.items():
        seen = run.history["documents"]
        ax_loss.plot(seen, run.history["loss"], lw=1, label=name)
        ax_acc.plot(seen, run.history["accuracy"], lw=1, label=name)
    ax_loss.set(xlabel="documents seen", ylabel="training loss", yscale="log")
    ax_acc.set(xlabel="documents seen", ylabel="accuracy, predictable positions", ylim=(0, 1.02))
    ax_acc.legend(loc="lower right")
    fig.suptitle("causal LM on packed documents (jaxops)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--rows", type=int, default=ROWS, help="packed rows per step")
    parser.add_argument("--row-length", type=int, default=ROW_LENGTH, help="slots per row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE)
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of the learning curves")
    parser.add_argument(
        "--compare-padding",
        action="store_true",
        help="also train on the same documents one per row, and compare tokens/s",
    )
    parser.add_argument(
        "--padded-batch-size",
        type=int,
        metavar="B",
        help="documents per padded step (default: the packed run's mean per step)",
    )
    parser.add_argument("--eval-documents", type=int, default=EVAL_DOCUMENTS)
    parser.add_argument("--no-token-shift", action="store_true", help="ablation: no token shift")
    args = parser.parse_args(argv)
    if args.row_length < MAX_LENGTH:
        parser.error(f"--row-length {args.row_length} is shorter than a document ({MAX_LENGTH})")

    common = {"learning_rate": args.learning_rate, "token_shift": not args.no_token_shift}
    layout = {"num_rows": args.rows, "row_length": args.row_length}
    packed = train(
        packed_batches(document_stream(args.seed), **layout), args.steps, args.seed, **common
    )
    print(
        f"packed: {packed.steps} steps of {args.rows} x {args.row_length} slots, "
        f"{packed.documents} documents, {packed.tokens} tokens, "
        f"{packed.tokens_per_second:.0f} tokens/s"
    )
    runs = {"packed": packed}
    evaluate_on = functools.partial(
        held_out_accuracy, seed=args.seed, documents=args.eval_documents, rows=args.rows,
        row_length=args.row_length,
    )  # fmt: skip
    if args.compare_padding:
        batch_size = args.padded_batch_size or max(1, round(packed.documents / packed.steps))
        same_documents = itertools.islice(document_stream(args.seed), packed.documents)
        padded = train(
            padded_batches(same_documents, batch_size=batch_size),
            -(-packed.documents // batch_size),
            args.seed,
            label="padded",
            **common,
        )
        runs["padded"] = padded
        print(
            f"padded: {padded.steps} steps of {batch_size} x {MAX_LENGTH} slots, "
            f"{padded.documents} documents, {padded.tokens} tokens, "
            f"{padded.tokens_per_second:.0f} tokens/s; "
            f"held-out accuracy when trained padded {evaluate_on(padded.params):.3f}"
        )
        print(
            f"training throughput: {packed.tokens_per_second:.0f} tokens/s packed vs "
            f"{padded.tokens_per_second:.0f} padded "
            f"({packed.tokens_per_second / padded.tokens_per_second:.2f}x)"
        )
    if args.plot:
        plot(runs, args.plot)
        print(f"learning curves written to {args.plot}")
    print(
        f"packing efficiency: {packed.tokens / packed.slots:.2f} packed vs "
        f"{packed.tokens / (packed.documents * MAX_LENGTH):.2f} padded (one document per row)"
    )
    accuracy = evaluate_on(packed.params)
    print(
        f"held-out accuracy: {accuracy:.3f}" + (" (no token shift)" if args.no_token_shift else "")
    )
    return accuracy


if __name__ == "__main__":
    main()
