"""The main job, examples/gated_attention.py: it trains, and vmap equals a loop."""

import importlib.util
import pathlib
import re

import chex
import jax
import numpy as np
import pytest

PATH = pathlib.Path(__file__).resolve().parent.parent / "examples" / "gated_attention.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("gated_attention", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_lowers_the_loss(example):
    _, history = example.train(steps=150, batch_size=32, seed=1, progress=False)
    first, last = np.mean(history["loss"][:10]), np.mean(history["loss"][-20:])
    assert last < 0.8 * first, (first, last)


def test_vmapped_train_step_equals_a_python_loop_over_examples(example):
    rng = np.random.default_rng(3)
    batch = example.make_batch(rng, 3)
    params = example.init_params(jax.random.key(3))
    optimizer = example.make_optimizer()
    opt_state = optimizer.init(params)
    vmapped = example.make_train_step(optimizer)(params, opt_state, batch)
    looped = example.make_train_step(optimizer, forward=example.loop_forward)(
        params, opt_state, batch
    )
    chex.assert_trees_all_close(vmapped, looped, rtol=1e-5, atol=1e-6)
    assert set(vmapped[0].names()) == set(params.names())


def test_padding_does_not_leak(example):
    """Whatever the packed padding holds, the logits stay the same."""
    batch = example.make_batch(np.random.default_rng(4), 8)
    params = example.init_params(jax.random.key(4))
    logits = [example.batch_forward(params, batch, pad).logits for pad in (1.0, -3.0, 5.0)]
    chex.assert_trees_all_equal(logits[0], logits[1], logits[2])


def test_command_line_trains_saves_plots_and_reloads(example, tmp_path, capsys):
    checkpoint, png = tmp_path / "params.jaxops", tmp_path / "curves.png"
    args = ["--steps", "3", "--batch-size", "8", "--checkpoint", str(checkpoint)]
    trained = example.main([*args, "--plot", str(png)])
    out = capsys.readouterr().out
    assert re.search(r"^held-out accuracy: \d\.\d{3}$", out, flags=re.M), out
    assert checkpoint.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    reloaded = example.main(args)  # the file exists now: evaluate without training
    out = capsys.readouterr().out
    assert "loaded" in out and "trained" not in out
    assert reloaded == trained


def test_gate_ablation_reports_in_the_same_format(example, capsys):
    example.main(["--steps", "2", "--batch-size", "4", "--no-gate"])
    out = capsys.readouterr().out
    assert re.search(r"^held-out accuracy: \d\.\d{3} \(no gate\)$", out, flags=re.M), out
