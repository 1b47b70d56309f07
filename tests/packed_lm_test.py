"""examples/packed_lm.py: documents packed in a row stay apart, training learns, packed rows
compute what one document per row computes, and the command line reports its figures."""

import importlib.util
import itertools
import pathlib
import re

import jax
import numpy as np
import pytest

import jaxops

PATH = pathlib.Path(__file__).resolve().parent.parent / "examples" / "packed_lm.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("packed_lm", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _documents(example, seed, count):
    return list(itertools.islice(example.document_stream(seed), count))


def _packed(example, documents, *, num_rows, row_length):
    """All ``documents`` packed (checked: none dropped) and their lengths."""
    capacity = sum(len(doc.tokens) for doc in documents)
    flat = example.flatten(documents, capacity=capacity, max_documents=len(documents))
    rows = example.pack_rows(*flat, num_rows=num_rows, row_length=row_length)
    placed = np.unique(np.asarray(rows.segment_ids))
    assert list(placed[placed >= 0]) == list(range(len(documents))), placed
    return rows, flat[2]


def test_no_document_sees_another_in_its_row(example):
    """Changing every token of one document leaves every other document's logits
    bit-identical; the same change leaks into all of them through a mask without
    the segment term, and into the next document through an uncut token shift."""
    documents = _documents(example, 5, 12)
    rows, _ = _packed(example, documents, num_rows=3, row_length=128)
    ids = np.asarray(rows.segment_ids)
    in_row = [n for n in np.unique(ids[0]) if n >= 0]
    assert len(in_row) >= 3, in_row
    victim = in_row[1]  # documents before and after it in its row
    changed = list(documents)
    tokens = documents[victim].tokens
    changed[victim] = documents[victim]._replace(tokens=(tokens + 1) % example.PAD)
    assert np.all(changed[victim].tokens != tokens)
    perturbed, _ = _packed(example, changed, num_rows=3, row_length=128)
    np.testing.assert_array_equal(perturbed.segment_ids, rows.segment_ids)
    np.testing.assert_array_equal(perturbed.positions, rows.positions)

    params = example.init_params(jax.random.key(0))
    forward = jax.jit(example.forward)

    def logits(rows, mask, shift_ids=None):
        ids = rows.segment_ids if shift_ids is None else shift_ids
        return np.asarray(forward(params, rows.tokens, rows.positions, ids, mask))

    others, own = (ids >= 0) & (ids != victim), ids == victim
    before = logits(rows, example.document_mask(rows))
    after = logits(perturbed, example.document_mask(perturbed))
    np.testing.assert_array_equal(after[others], before[others])
    assert not np.allclose(after[own], before[own])  # the change itself is visible

    # Sanity: the perturbation would be seen. Without the segment term, the
    # position-causal mask lets every document attend the victim's first slots.
    def leaky(rows):
        return jaxops.attention_mask(positions=rows.positions, causal=True)

    before, after = logits(rows, leaky(rows)), logits(perturbed, leaky(perturbed))
    for n in in_row:
        if n != victim:
            assert not np.allclose(after[ids == n], before[ids == n]), n
    # ... and a token shift that ignores document boundaries leaks into the next document.
    one_document = np.where(ids >= 0, 0, -1)
    before = logits(rows, example.document_mask(rows), one_document)
    after = logits(perturbed, example.document_mask(perturbed), one_document)
    following = ids == victim + 1
    assert not np.allclose(after[following], before[following])


def test_packed_rows_compute_what_one_document_per_row_computes(example):
    documents = _documents(example, 7, 10)
    packed, lengths = _packed(example, documents, num_rows=3, row_length=128)
    flat = example.flatten(documents, capacity=10 * example.MAX_LENGTH, max_documents=10)
    padded = example.pad_rows(*flat)
    assert packed.tokens.shape[0] < padded.tokens.shape[0]  # several documents share a row
    params = example.init_params(jax.random.key(2))

    @jax.jit
    def logits_and_metrics(params, rows):
        return example.logits_of(params, rows), example.loss_and_metrics(params, rows)[1]

    (packed_logits, packed_metrics), (padded_logits, padded_metrics) = (
        logits_and_metrics(params, rows) for rows in (packed, padded)
    )
    per_document_packed = jaxops.unpack_sequences(packed_logits, lengths)
    per_document_padded = jaxops.unpack_rnn_sequence(padded_logits, lengths, time_major=False)
    assert per_document_packed.shape == (sum(lengths), example.VOCAB)
    np.testing.assert_allclose(per_document_packed, per_document_padded, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(packed_metrics["loss"], padded_metrics["loss"], rtol=1e-5)
    for name in ("correct", "scored", "tokens"):
        assert packed_metrics[name] == padded_metrics[name], name


def test_training_lowers_the_loss(example):
    batches = example.packed_batches(example.document_stream(1), num_rows=2, row_length=64)
    run = example.train(batches, 120, seed=1, progress=False)
    assert run.steps == 120 and run.history["documents"][-1] == run.documents
    # From about 3.15 to about 2.5 (seeds 1-3): the unigram statistics and the first
    # arithmetic progressions; the copy and reversal rules need hundreds of steps more.
    first, last = np.mean(run.history["loss"][:10]), np.mean(run.history["loss"][-20:])
    assert last < 0.85 * first, (first, last)


def test_batches_take_every_document_once_in_order(example):
    documents = _documents(example, 3, 40)
    batches = list(example.packed_batches(documents, num_rows=2, row_length=64))
    assert sum(batch.num_documents for batch in batches) == 40
    seen = []
    for batch in batches:
        ids = np.asarray(batch.rows.segment_ids)
        tokens = np.asarray(batch.rows.tokens)
        seen += [tokens[ids == n] for n in range(batch.num_documents)]
        assert np.all(tokens[ids < 0] == example.PAD)
    for got, doc in zip(seen, documents, strict=True):
        np.testing.assert_array_equal(got, doc.tokens)
    # Next-fit leaves less than one document's worth of slots empty in each full row.
    used = [int(np.sum(np.asarray(b.rows.segment_ids) >= 0)) for b in batches[:-1]]
    assert min(used) > 2 * (64 - example.MAX_LENGTH), used


def test_command_line_reports_the_figures_and_plots(example, tmp_path, capsys):
    png = tmp_path / "curves.png"
    accuracy = example.main(
        ["--steps", "3", "--rows", "2", "--row-length", "64", "--eval-documents", "40",
         "--compare-padding", "--plot", str(png)]
    )  # fmt: skip
    captured = capsys.readouterr()
    out = captured.out
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"held-out accuracy: \d\.\d{3}", last), out
    assert last == f"held-out accuracy: {accuracy:.3f}"
    efficiency = re.search(
        r"^packing efficiency: (\d\.\d\d) packed vs (\d\.\d\d) padded \(one document per row\)$",
        out,
        flags=re.M,
    )
    assert efficiency, out
    packed, padded = map(float, efficiency.groups())
    assert 0 < padded < packed <= 1
    assert re.search(
        r"^training throughput: \d+ tokens/s packed vs \d+ padded \(\d+\.\d\dx\)$", out, flags=re.M
    ), out
    assert re.search(r"^packed: 3 steps of 2 x 64 slots, \d+ documents", out, flags=re.M), out
    assert re.search(r"^padded: \d+ steps of \d+ x 48 slots", out, flags=re.M), out
    assert "packed [" in captured.err and "padded [" in captured.err  # the progress bars
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
