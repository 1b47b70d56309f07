"""Tests for jaxops._src.scope: Scope, WorkspaceStack and do."""

from __future__ import annotations

import copy
import pickle

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxops
from jaxops import Scope

# --------------------------------------------------------------------------- #
# Scope: build and read
# --------------------------------------------------------------------------- #


def _params():
    return Scope(
        {
            "encoder/w_q": jnp.ones((2, 3)),
            "encoder/w_v": jnp.zeros((2, 3)),
            "decoder/b": jnp.arange(3.0),
            "step": jnp.zeros((), jnp.int32),
        }
    )


def test_read_methods():
    s = _params()
    assert s.names() == ("decoder/b", "encoder/w_q", "encoder/w_v", "step")
    assert list(s) == list(s.names())
    assert len(s) == 4
    assert "encoder/w_q" in s and "encoder" not in s and 3 not in s
    np.testing.assert_array_equal(s["decoder/b"], np.arange(3.0))
    assert s.get("missing") is None
    assert s.get("missing", 5) == 5
    assert s.get("step") is s["step"]
    assert [n for n, _ in s.items()] == list(s.names())
    assert s.values()[0] is s["decoder/b"]
    assert set(s.keys()) == set(s.names())
    assert dict(s)["step"] is s["step"]


def test_values_are_stored_unconverted():
    x_np, x_jax = np.arange(3), jnp.arange(3)
    s = Scope({"np": x_np, "jax": x_jax, "py": 1.5, "flag": True})
    assert s["np"] is x_np and s["jax"] is x_jax and s["py"] == 1.5 and s["flag"] is True
    assert Scope(s).items() == s.items()
    spec = Scope({"w": jax.ShapeDtypeStruct((2,), jnp.float32)})
    assert spec["w"].shape == (2,)


def test_missing_name_names_closest():
    s = _params().update({"aaa/unrelated": 1.0, "bbb": 2.0})
    with pytest.raises(KeyError, match=r"Scope: expected a name in the scope, got 'encoder/w_k'"):
        s["encoder/w_k"]
    with pytest.raises(KeyError) as info:
        s["encoder/w_k"]
    message = info.value.args[0]
    assert "'encoder/w_q'" in message and "'encoder/w_v'" in message
    assert "'step'" not in message and "aaa" not in message and "bbb" not in message
    with pytest.raises(KeyError, match=r"prefix of 2 name\(s\); use scope.child\('encoder'\)"):
        s["encoder"]
    with pytest.raises(KeyError, match=r"The scope is empty"):
        Scope()["a"]


@pytest.mark.parametrize(
    ("name", "error", "match"),
    [
        ("", ValueError, "expected a non-empty name, got ''"),
        ("/a", ValueError, "expected a name without a leading or trailing '/', got '/a'"),
        ("a/", ValueError, "expected a name without a leading or trailing '/', got 'a/'"),
        ("a//b", ValueError, "expected a name without empty segments"),
        (3, TypeError, "expected name to be a str, got int 3"),
        (None, TypeError, "expected name to be a str, got NoneType"),
    ],
)
def test_invalid_names(name, error, match):
    with pytest.raises(error, match=r"^Scope: " + match):
        Scope({name: 1.0})
    with pytest.raises(error, match=r"^Scope.set: " + match):
        Scope().set(name, 1.0)
    with pytest.raises(error, match=r"^Scope.get: " + match):
        Scope().get(name)
    with pytest.raises(error, match=r"^Scope.remove: " + match):
        Scope({"a": 1.0}).remove(name)
    with pytest.raises(error, match=r"^Scope.update: " + match):
        Scope().update({name: 1.0})
    with pytest.raises(error, match=r"^Scope: " + match):
        Scope({"a": 1.0})[name]
    prefix_match = match.replace("name", "prefix")
    for method in ("child", "prefixed"):
        with pytest.raises(error, match=f"^Scope.{method}: " + prefix_match):
            getattr(Scope({"a/b": 1.0}), method)(name)
    with pytest.raises(error, match=r"^Scope.with_child: " + prefix_match):
        Scope().with_child(name, {})
    with pytest.raises(
        error,
        match=r"^WorkspaceStack.push_forward: "
        + match.replace("a name", "an inner name")
        .replace("name to", "inner name to")
        .replace("non-empty name", "non-empty inner name"),
    ):
        jaxops.create_scope().push_forward(Scope(), {name: "x"})


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (object(), "expected an array or Python scalar for 'a', got object"),
        (
            [1.0, 2.0],
            "expected an array or Python scalar for 'a', got list. Convert it with jnp.asarray",
        ),
        ("text", "expected an array or Python scalar for 'a', got str"),
        ({"b": 1.0}, "expected an array for 'a', got a dict. Nest scopes"),
        (np.array(["x"]), "expected a numeric or bool array for 'a', got dtype <U1"),
        (np.array([None]), "expected a numeric or bool array for 'a', got dtype object"),
    ],
)
def test_invalid_values(value, match):
    with pytest.raises(TypeError, match=r"^Scope: " + match):
        Scope({"a": value})
    with pytest.raises(TypeError, match=r"^Scope.set: " + match):
        Scope().set("a", value)


def test_constructor_and_update_reject_non_mappings():
    with pytest.raises(
        TypeError, match=r"^Scope: expected a mapping from names to arrays, got list"
    ):
        Scope([("a", 1.0)])
    with pytest.raises(TypeError, match=r"^Scope.update: expected a mapping or Scope, got list"):
        Scope().update([("a", 1.0)])


def test_immutable():
    s = _params()
    with pytest.raises(AttributeError, match=r"immutable"):
        s.x = 1
    with pytest.raises(AttributeError, match=r"immutable"):
        s._data = {}
    with pytest.raises(TypeError):
        s["step"] = 1  # type: ignore[index]
    with pytest.raises(AttributeError, match=r"immutable"):
        del s._data


def test_functional_updates_leave_the_original_alone():
    s = Scope({"a": jnp.ones(2), "b": jnp.zeros(2)})
    t = s.set("c", jnp.ones(1))
    u = s.update(Scope({"a": jnp.zeros(5), "d": 2.0}))
    v = s.remove("a")
    assert s.names() == ("a", "b") and s["a"].shape == (2,)
    assert t.names() == ("a", "b", "c")
    assert u.names() == ("a", "b", "d") and u["a"].shape == (5,)
    assert v.names() == ("b",)
    with pytest.raises(KeyError, match=r"^\"Scope.remove: expected a name in the scope, got 'z'"):
        s.remove("z")


def test_hierarchy():
    s = Scope({"enc/w": 1.0, "enc/attn/q": 2.0, "encoder": 3.0, "dec/w": 4.0, "enc": 5.0})
    enc = s.child("enc")
    assert enc.names() == ("attn/q", "w")
    assert s.child("enc/attn").names() == ("q",)
    assert enc.prefixed("model/enc").names() == ("model/enc/attn/q", "model/enc/w")
    replaced = s.with_child("enc", Scope({"v": 6.0}))
    assert replaced.names() == ("dec/w", "enc", "enc/v", "encoder")
    assert replaced["enc"] == 5.0 and replaced["encoder"] == 3.0
    assert s.with_child("new", {"x": 1.0})["new/x"] == 1.0
    with pytest.raises(KeyError, match=r"Scope.child: expected a name in the scope, got 'end'"):
        s.child("end")
    with pytest.raises(TypeError, match=r"^Scope.with_child: expected `sub` to be a mapping"):
        s.with_child("enc", 1.0)


def test_nested_round_trip():
    nested = {"enc": {"attn": {"q": 1.0, "k": 2.0}, "w": 3.0}, "step": 4, "empty": {}}
    s = Scope.from_nested(nested)
    assert s.names() == ("enc/attn/k", "enc/attn/q", "enc/w", "step")
    assert s.to_nested() == {"enc": {"attn": {"k": 2.0, "q": 1.0}, "w": 3.0}, "step": 4}
    assert Scope.from_nested(s.to_nested()).items() == s.items()
    with pytest.raises(ValueError, match=r"^Scope.from_nested: expected a key without empty"):
        Scope.from_nested({"a//b": 1.0})
    with pytest.raises(TypeError, match=r"^Scope.from_nested: expected key to be a str, got int"):
        Scope.from_nested({"a": {1: 1.0}})
    with pytest.raises(TypeError, match=r"^Scope.from_nested: expected a mapping, got float"):
        Scope.from_nested(1.0)
    for names in (("a", "a/b"), ("a/b", "a/b/c")):
        with pytest.raises(ValueError, match=r"^Scope.to_nested: expected no name that is also a"):
            Scope(dict.fromkeys(names, 1.0)).to_nested()


def test_from_nested_rejects_keys_that_flatten_to_the_same_name():
    with pytest.raises(
        ValueError,
        match=r"^Scope\.from_nested: expected keys that flatten to distinct names, got 'a/b' "
        r"from both \['a/b'\] and \['a'\]\['b'\]\.$",
    ):
        Scope.from_nested({"a/b": 1.0, "a": {"b": 2.0}})
    for nested, name in [
        ({"a": {"b": 2.0}, "a/b": 1.0}, "a/b"),  # either order
        ({"a": {"b/c": 1.0}, "a/b": {"c": 2.0}}, "a/b/c"),
        ({"a/b": {"c": 1.0}, "x": 0.0, "a": {"b": {"c": 2.0}}}, "a/b/c"),
        ({"a": {"b": {"c": None}}, "a/b/c": None}, "a/b/c"),  # None leaves count too
    ]:
        with pytest.raises(ValueError, match=rf"^Scope\.from_nested: expected .*, got '{name}' "):
            Scope.from_nested(nested)
    # Slash keys beside nesting are fine while the names differ; empty mappings hold no names.
    s = Scope.from_nested({"a/b": 1.0, "a": {"c": 2.0, "b": {}}, "a/b/c": {}})
    assert s.names() == ("a/b", "a/c")


def test_repr_shows_names_shapes_dtypes_not_values():
    s = Scope({"w": jnp.full((2, 3), 7.0, jnp.bfloat16), "n": np.int64(9), "lr": 0.5})
    assert repr(s) == "Scope({'lr': float, 'n': int64[], 'w': bfloat16[2,3]})"
    big = Scope({f"layer{i}/weights": jnp.zeros((4, 4), jnp.float32) for i in range(10)})
    lines = repr(big).splitlines()
    assert lines[0] == "Scope({" and lines[-1] == "})" and len(lines) == 12
    assert lines[1] == "    'layer0/weights': float32[4,4],"
    assert repr(Scope()) == "Scope({})"


def test_equality_is_identity_and_scopes_are_unhashable():
    s = Scope({"a": jnp.arange(3.0)})
    same_contents = Scope({"a": jnp.arange(3.0)})
    assert s == s
    assert s != same_contents  # never elementwise
    assert (s == same_contents) is False
    assert s != {"a": s["a"]}
    with pytest.raises(TypeError, match=r"unhashable"):
        hash(s)
    stack = jaxops.create_scope()
    assert stack == stack and stack != jaxops.create_scope()
    with pytest.raises(TypeError, match=r"unhashable"):
        hash(stack)


def test_copy_and_pickle():
    s = Scope({"a": np.arange(3), "b": 1.0})
    for other in (copy.copy(s), copy.deepcopy(s), pickle.loads(pickle.dumps(s))):
        assert other.names() == s.names()
        np.testing.assert_array_equal(other["a"], s["a"])
    stack = jaxops.create_scope().push_forward(s, {"a": "a", "b": "b"})[0]
    restored = pickle.loads(pickle.dumps(stack))
    assert restored.top == 0 and restored.workspaces[0].names() == ("a", "b")


# --------------------------------------------------------------------------- #
# Scope as a pytree
# --------------------------------------------------------------------------- #


def test_flatten_with_path_shows_names_in_sorted_order():
    s = Scope({"z": jnp.zeros(1), "a/b": jnp.ones(2), "a": jnp.ones(3), "m/x/y": jnp.ones(4)})
    paths, treedef = jax.tree_util.tree_flatten_with_path(s)
    assert [path for path, _ in paths] == [
        (jax.tree_util.DictKey(n),) for n in ("a", "a/b", "m/x/y", "z")
    ]
    assert [leaf.shape for _, leaf in paths] == [(3,), (2,), (4,), (1,)]
    assert [jax.tree_util.keystr(p) for p, _ in paths] == ["['a']", "['a/b']", "['m/x/y']", "['z']"]
    assert jax.tree.leaves(s) == list(s.values())
    assert treedef == jax.tree.structure(Scope(dict(reversed(s.items()))))
    assert treedef != jax.tree.structure(s.remove("z"))


def test_unflatten_accepts_placeholders_without_validation():
    s = Scope({"a": jnp.ones(2), "b": jnp.ones(3)})
    treedef = jax.tree.structure(s)
    marker = object()
    t = jax.tree.unflatten(treedef, [None, marker])
    assert t["a"] is None and t["b"] is marker
    assert repr(t) == "Scope({'a': NoneType, 'b': object})"
    shapes = jax.tree.map(lambda x: x.shape, s)
    assert shapes.items() == (("a", (2,)), ("b", (3,)))
    stack = jaxops.create_scope().push_forward(s, {"x": "a"})[0]
    placeholder = jax.tree.unflatten(jax.tree.structure(stack), [None])
    assert placeholder.top == 0 and placeholder.workspaces[0]["x"] is None


def test_jit_passes_scopes_and_does_not_retrace():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(s):
        return s.set("w", s["w"] * 2).set("count", s["count"] + 1)

    s = Scope({"w": jnp.ones(2), "count": jnp.zeros((), jnp.int32)})
    out = step(step(s))
    assert isinstance(out, Scope) and out.names() == ("count", "w")
    np.testing.assert_array_equal(out["w"], [4.0, 4.0])
    assert int(out["count"]) == 2


def test_grad_of_a_scope_is_a_scope_with_the_same_names():
    s = Scope({"w": jnp.array([1.0, 2.0]), "b": jnp.array(3.0)})
    g = jax.grad(lambda p: jnp.sum(p["w"] ** 2) * p["b"])(s)
    assert isinstance(g, Scope) and g.names() == s.names()
    np.testing.assert_allclose(g["w"], [6.0, 12.0])
    np.testing.assert_allclose(g["b"], 5.0)


def test_vmap_over_a_function_returning_a_scope():
    def f(x):
        return Scope({"double": 2 * x, "sum": jnp.sum(x)})

    out = jax.vmap(f)(jnp.arange(6.0).reshape(3, 2))
    assert isinstance(out, Scope)
    chex.assert_shape(out["double"], (3, 2))
    np.testing.assert_allclose(out["sum"], [1.0, 5.0, 9.0])
    batched = jax.vmap(lambda s: s["a"] * s["b"], in_axes=(Scope({"a": 0, "b": None}),))
    np.testing.assert_allclose(batched(Scope({"a": jnp.arange(3.0), "b": 2.0})), [0.0, 2.0, 4.0])


def _regression_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype(np.float32)
    w_true = np.array([1.5, -2.0, 0.5], np.float32)
    return jnp.asarray(x), jnp.asarray(x @ w_true + 0.3)


def _loss(params, x, y):
    pred = x @ params["linear/w"] + params["linear/b"]
    return jnp.mean((pred - y) ** 2)


def test_optax_adam_training_loop_over_a_scope():
    x, y = _regression_data()
    f32 = jnp.float32
    params = Scope({"linear/w": jnp.zeros(3, f32), "linear/b": jnp.zeros((), f32)})
    optimizer = optax.adam(0.1)
    state = optimizer.init(params)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(_loss)(params, x, y)
        with jax.numpy_dtype_promotion("standard"):  # optax's adam mixes int32 and float
            updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    first = float(_loss(params, x, y))
    for _ in range(150):
        params, state, _ = step(params, state)
    assert isinstance(params, Scope) and params.names() == ("linear/b", "linear/w")
    assert float(_loss(params, x, y)) < 1e-2 * first
    np.testing.assert_allclose(params["linear/w"], [1.5, -2.0, 0.5], atol=0.05)


def test_optax_masked_with_a_name_predicate():
    params = Scope({"enc/w": jnp.ones(2), "enc/b": jnp.ones(()), "dec/w": jnp.ones(2)})
    grads = jax.tree.map(lambda p: jnp.full_like(p, 3.0), params)
    masks = [
        Scope({n: n.startswith("enc/") for n in params}),
        lambda p: jax.tree_util.tree_map_with_path(lambda path, _: path[0].key < "e", p),
    ]
    for mask, trained in zip(masks, (("enc/b", "enc/w"), ("dec/w",)), strict=True):
        optimizer = optax.masked(optax.sgd(0.5), mask)

        @jax.jit
        def step(params, state, optimizer=optimizer):
            updates, state = optimizer.update(grads, state, params)
            return updates

        updates = step(params, optimizer.init(params))
        assert isinstance(updates, Scope) and updates.names() == params.names()
        for name in params:
            # sgd scales the masked-in names; optax.masked passes the others through.
            expected = -1.5 if name in trained else 3.0
            np.testing.assert_allclose(updates[name], np.full(params[name].shape, expected))


# --------------------------------------------------------------------------- #
# WorkspaceStack
# --------------------------------------------------------------------------- #


def test_create_scope_and_has_scope():
    stack = jaxops.create_scope()
    assert isinstance(stack, jaxops.WorkspaceStack) and stack.top == -1 and stack.empty
    assert stack.workspaces == () and not jaxops.has_scope(stack)
    pushed, _ = stack.push_forward(Scope())
    assert jaxops.has_scope(pushed) and pushed.top == 0
    cleared = jaxops.create_scope(pushed)
    assert not jaxops.has_scope(cleared) and len(cleared.workspaces) == 1
    with pytest.raises(TypeError, match=r"^create_scope: expected a WorkspaceStack, got Scope"):
        jaxops.create_scope(Scope())
    with pytest.raises(TypeError, match=r"^has_scope: expected a WorkspaceStack, got NoneType"):
        jaxops.has_scope(None)


def test_stack_constructor_validates():
    stack = jaxops.WorkspaceStack([Scope(), Scope({"a": 1.0})], top=1)
    assert stack.top == 1 and stack.workspaces[1].names() == ("a",)
    with pytest.raises(ValueError, match=r"^WorkspaceStack: expected top < len\(workspaces\) = 1"):
        jaxops.WorkspaceStack([Scope()], top=1)
    with pytest.raises(ValueError, match=r"^WorkspaceStack: expected top >= -1, got top=-2"):
        jaxops.WorkspaceStack([], top=-2)
    with pytest.raises(TypeError, match=r"^WorkspaceStack: expected workspaces\[0\] to be a Scope"):
        jaxops.WorkspaceStack([{"a": 1.0}], top=0)
    with pytest.raises(AttributeError, match=r"immutable"):
        stack.top = 0


def test_pops_are_lifo_and_pop_on_empty_returns_none():
    parent = Scope()
    stack = jaxops.create_scope()
    for i in range(3):
        stack, ws = stack.push_forward(parent)
        assert stack.top == i and ws.names() == ()
        stack = stack.set_top(ws.set("index", i))
    order = []
    while True:
        stack, ws = stack.pop_gradient(parent)
        if ws is None:
            break
        order.append(ws["index"])
    assert order == [2, 1, 0]
    assert stack.empty and len(stack.workspaces) == 3
    again, ws = stack.pop_gradient(parent)
    assert ws is None and again is stack


def test_push_forward_reads_bindings_and_reuses_popped_workspaces():
    parent = Scope({"x": jnp.arange(2.0), "y": jnp.ones(2)})
    stack, ws = jaxops.create_scope().push_forward(parent, {"a": "x", "b": "missing"})
    assert ws.names() == ("a",)  # an outer name not in parent reads nothing
    assert ws["a"] is parent["x"] and stack.workspaces[0] is ws
    stack = stack.set_top(ws.set("local", 1.0).set("b", 2.0))
    stack, _ = stack.pop_gradient(parent)
    new_parent = parent.set("x", jnp.full(2, 9.0))
    stack, ws = stack.push_forward(new_parent, {"a": "x", "b": "missing"})
    assert len(stack.workspaces) == 1  # reused, not created
    assert ws.names() == ("a", "local")  # bound local copies dropped; other locals kept
    np.testing.assert_array_equal(ws["a"], [9.0, 9.0])
    # Pushing past the end creates a new workspace.
    stack, ws2 = stack.push_forward(parent)
    assert len(stack.workspaces) == 2 and ws2.names() == () and stack.top == 1


def test_reuse_after_clear():
    stack, ws = jaxops.create_scope().push_forward(Scope())
    stack = stack.set_top(ws.set("cached", 3.0))
    stack = jaxops.create_scope(stack)
    assert stack.empty
    stack, ws = stack.push_forward(Scope())
    assert ws["cached"] == 3.0 and len(stack.workspaces) == 1


def test_pop_gradient_never_overwrites_saved_forward_values():
    parent = Scope({"x": 1.0, "x_grad": 10.0})
    stack, ws = jaxops.create_scope().push_forward(parent, {"x": "x"})
    stack = stack.set_top(ws.set("y", 2.0))
    later = parent.set("x", 100.0).set("y", 200.0)
    stack, ws = stack.pop_gradient(later, {"x": "x", "y": "y", "g": "x_grad", "h": "nothing"})
    assert ws.items() == (("g", 10.0), ("x", 1.0), ("y", 2.0))
    # The kept workspace does not hold the gradient copies: the next pop reads fresh values.
    stack, _ = stack.push_forward(parent, {"x": "x"})
    stack, ws = stack.pop_gradient(parent.set("x_grad", 20.0), {"g": "x_grad"})
    assert ws["g"] == 20.0


def test_reuse_last_forward():
    parent = Scope({"x": 1.0})
    empty = jaxops.create_scope()
    same, ws = empty.reuse_last_forward(parent, {"a": "x"})
    assert ws is None and same is empty and same.top == -1
    stack, ws = empty.push_forward(parent, {"a": "x"})
    stack = stack.set_top(ws.set("local", 5.0))
    stack, ws = stack.reuse_last_forward(parent.set("x", 2.0), {"a": "x", "b": "x"})
    assert stack.top == 0 and len(stack.workspaces) == 1
    assert ws.items() == (("a", 2.0), ("b", 2.0), ("local", 5.0))
    assert stack.workspaces[0] is ws


def test_set_top_errors():
    with pytest.raises(ValueError, match=r"^WorkspaceStack.set_top: expected a non-empty stack"):
        jaxops.create_scope().set_top(Scope())
    stack, _ = jaxops.create_scope().push_forward(Scope())
    with pytest.raises(TypeError, match=r"^WorkspaceStack.set_top: expected `workspace` to be a"):
        stack.set_top(1.0)


def test_binding_type_errors():
    stack = jaxops.create_scope()
    with pytest.raises(TypeError, match=r"^WorkspaceStack.push_forward: expected bindings as a"):
        stack.push_forward(Scope(), "x")
    with pytest.raises(TypeError, match=r"^WorkspaceStack.pop_gradient: expected each binding"):
        stack.pop_gradient(Scope(), [("a", "b", "c")])
    with pytest.raises(ValueError, match=r"^WorkspaceStack.push_forward: expected unique inner"):
        stack.push_forward(Scope(), [("a", "x"), ("a", "y")])
    with pytest.raises(TypeError, match=r"^WorkspaceStack.push_forward: expected `parent` to be"):
        stack.push_forward(1.0)


def test_check_bindings_match():
    jaxops.check_bindings_match({"a": "x", "b": "y"}, [("b", "y"), ("a", "x")])
    jaxops.check_bindings_match({}, None)
    with pytest.raises(ValueError) as info:
        jaxops.check_bindings_match({"a": "x", "b": "y", "c": "z"}, {"a": "x", "b": "w", "d": "v"})
    message = str(info.value)
    assert message.startswith(
        "check_bindings_match: expected equal bindings, got bindings mismatch"
    )
    assert "'b' -> 'y' vs 'b' -> 'w'" in message
    assert "'c' -> 'z' only in the first" in message
    assert "'d' -> 'v' only in the second" in message
    assert "'a'" not in message


def test_stack_is_a_pytree_with_static_top():
    parent = Scope({"x": jnp.ones(2)})
    stack, _ = jaxops.create_scope().push_forward(parent, {"x": "x"})
    stack, _ = stack.push_forward(parent)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(stack)[0]]
    assert paths == [".workspaces[0]['x']"]

    @jax.jit
    def bump(stack):
        assert stack.top == 1  # static under jit
        return stack.clear()

    out = bump(stack)
    assert out.empty and out.workspaces[0].names() == ("x",)


# --------------------------------------------------------------------------- #
# do
# --------------------------------------------------------------------------- #


def test_do_writes_bound_names_back():
    parent = Scope({"x": jnp.arange(3.0), "keep": jnp.ones(1)})

    def fn(ws):
        assert ws.names() == ("in",)  # "out" is bound to a name parent lacks: reads nothing
        return ws.set("out", ws["in"] * 2).set("tmp", ws["in"] + 1)

    stack, new_parent = jaxops.do(jaxops.create_scope(), parent, fn, {"in": "x", "out": "y"})
    assert new_parent.names() == ("keep", "x", "y")
    np.testing.assert_array_equal(new_parent["y"], [0.0, 2.0, 4.0])
    assert stack.top == 0 and stack.workspaces[0].names() == ("in", "out", "tmp")
    assert parent.names() == ("keep", "x")
    # Binding an existing outer name overwrites it.
    _, newer = jaxops.do(stack, new_parent, lambda ws: ws.set("in", ws["in"] + 1), {"in": "x"})
    np.testing.assert_array_equal(newer["x"], [1.0, 2.0, 3.0])


def test_do_reuse_workspace_sees_earlier_locals():
    parent = Scope({"x": 1.0})

    def count(ws):
        return ws.set("calls", ws.get("calls", 0) + 1).set("seen", ws["x"])

    stack, parent = jaxops.do(jaxops.create_scope(), parent, count, {"x": "x", "seen": "s"})
    assert stack.top == 0 and stack.workspaces[0]["calls"] == 1
    parent = parent.set("x", 2.0)
    stack, parent = jaxops.do(stack, parent, count, {"x": "x", "seen": "s"}, reuse_workspace=True)
    assert stack.top == 0 and len(stack.workspaces) == 1
    assert stack.workspaces[0]["calls"] == 2 and parent["s"] == 2.0
    # Without reuse, a fresh workspace is pushed.
    stack, parent = jaxops.do(stack, parent, count, {"x": "x", "seen": "s"})
    assert stack.top == 1 and stack.workspaces[1]["calls"] == 1
    # With reuse on an empty stack, one is pushed.
    stack, _ = jaxops.do(jaxops.create_scope(), parent, count, {"x": "x"}, reuse_workspace=True)
    assert stack.top == 0 and stack.workspaces[0]["calls"] == 1


def test_do_binding_errors():
    stack, parent = jaxops.create_scope(), Scope({"x": 1.0})
    ident = lambda ws: ws
    with pytest.raises(ValueError, match=r"^do: expected each outer name bound once, got 'x'"):
        jaxops.do(stack, parent, ident, {"a": "x", "b": "x"})
    with pytest.raises(ValueError, match=r"^do: expected unique inner names, got 'a' bound to"):
        jaxops.do(stack, parent, ident, [("a", "x"), ("a", "y")])
    with pytest.raises(
        ValueError,
        match=r"^do: expected `fn` to define every bound inner name, got undefined 'b' \(bound "
        r"to 'y'\)",
    ):
        jaxops.do(stack, parent, ident, {"a": "x", "b": "y"})
    with pytest.raises(TypeError, match=r"^do: expected `fn` to return a Scope, got dict"):
        jaxops.do(stack, parent, lambda ws: dict(ws), {"a": "x"})
    with pytest.raises(TypeError, match=r"^do: expected `fn` to be callable"):
        jaxops.do(stack, parent, None, {})
    with pytest.raises(TypeError, match=r"^do: expected a WorkspaceStack"):
        jaxops.do(parent, parent, ident, {})
    with pytest.raises(TypeError, match=r"^do: expected `reuse_workspace` to be a Python bool"):
        jaxops.do(stack, parent, ident, {}, reuse_workspace=1)


def test_do_under_jit():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(stack, parent):
        fn = lambda ws: ws.set("h", jnp.tanh(ws["x"]))
        return jaxops.do(stack, parent, fn, {"x": "inputs", "h": "hidden"})

    stack, parent = step(jaxops.create_scope(), Scope({"inputs": jnp.arange(3.0)}))
    np.testing.assert_allclose(parent["hidden"], np.tanh(np.arange(3.0)), rtol=1e-6)
    stack, parent = step(jaxops.create_scope(), Scope({"inputs": jnp.ones(3)}))
    np.testing.assert_allclose(parent["hidden"], np.tanh(np.ones(3)), rtol=1e-6)
    assert stack.top == 0


def test_gradient_accumulation_over_microbatches_pops_in_reverse():
    x, y = _regression_data()
    k = 4
    xs, ys = x.reshape(k, 16, 3), y.reshape(k, 16)
    popped: list[int] = []

    @jax.jit
    def accumulate(stack, w, xs, ys):
        parent = Scope({"params/w": w, "grads/w": jnp.zeros(3, jnp.float32)})
        for i in range(k):
            parent = parent.update({f"data/x{i}": xs[i], f"data/y{i}": ys[i]})
        stack = jaxops.create_scope(stack)
        for i in range(k):  # forward: one pushed scope per microbatch
            bindings = {"x": f"data/x{i}", "y": f"data/y{i}", "w": "params/w"}
            stack, ws = stack.push_forward(parent, bindings)
            stack = stack.set_top(ws.set("r", ws["x"] @ ws["w"] - ws["y"]).set("index", i))
        popped.clear()
        while jaxops.has_scope(stack):  # backward, LIFO; "x" keeps the saved forward value
            stack, ws = stack.pop_gradient(parent, {"g": "grads/w", "x": "data/x0"})
            popped.append(ws["index"])
            g = ws["g"] + 2.0 * (ws["x"].T @ ws["r"]) / ws["r"].shape[0]
            parent = parent.set("grads/w", g)
        return stack, parent["grads/w"]

    def total_loss(w):
        return sum(jnp.mean((xs[i] @ w - ys[i]) ** 2) for i in range(k))

    stack = jaxops.create_scope()
    for w in (
        jnp.zeros(3, jnp.float32),
        jnp.array([1.0, -1.0, 2.0], jnp.float32),
    ):  # second call reuses the workspaces
        stack, grad = accumulate(stack, w, xs, ys)
        np.testing.assert_allclose(grad, jax.grad(total_loss)(w), rtol=1e-5, atol=1e-5)
        assert stack.empty and len(stack.workspaces) == k
    assert popped == [3, 2, 1, 0]
