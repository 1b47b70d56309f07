"""Scopes: immutable, named collections of arrays, and Caffe2's workspace stack as values.

A :class:`Scope` maps ``/``-separated names (``"encoder/attn/w_q"``) to arrays.
It is a JAX pytree whose names are static structure and whose arrays are the
leaves, so it passes through ``jit``, ``vmap``, ``grad`` and optax unchanged.
:class:`WorkspaceStack` and :func:`do` replace Caffe2's mutable child
workspaces (``CreateScope``, ``HasScope``, ``Do``) with values that a training
step returns instead of mutating. Checkpoints live in
``checkpoint.py``.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

from jaxops._src import checks

Bindings = Mapping[str, str] | Iterable[tuple[str, str]]

# --------------------------------------------------------------------------- #
# Names and values
# --------------------------------------------------------------------------- #


def _check_name(op: str, name: Any, what: str = "name") -> str:
    """``name`` if it is a valid ``/``-separated path, else ``TypeError``/``ValueError``."""
    if not isinstance(name, str):
        raise checks.type_error(op, f"{what} to be a str", f"{type(name).__name__} {name!r}")
    a = "an" if what[0] in "aeiou" else "a"
    if not name:
        raise checks.value_error(op, f"a non-empty {what}", "''")
    if name.startswith("/") or name.endswith("/"):
        raise checks.value_error(op, f"{a} {what} without a leading or trailing '/'", repr(name))
    if "//" in name:
        raise checks.value_error(op, f"{a} {what} without empty segments ('//')", repr(name))
    return name


def _is_array_like(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def _check_value(op: str, name: str, value: Any) -> Any:
    """``value`` unchanged if it can be a Scope leaf, else ``TypeError``.

    Leaves are arrays (anything with ``shape`` and ``dtype``: ``jax.Array``,
    NumPy arrays and scalars, tracers, ``jax.ShapeDtypeStruct``) or Python
    scalars; ``None`` is accepted too (an empty subtree, as in ``in_axes``
    specs), and so are ``jax.sharding.Sharding`` and ``PartitionSpec`` leaves
    (a Scope of shardings for ``device_put``, ``jit``'s ``out_shardings`` or
    ``shard_map``'s specs). Nothing is converted, so NumPy stays NumPy and
    ``jit`` sees no copy.
    """
    if value is None or isinstance(value, (bool, int, float, complex)):
        return value
    if isinstance(value, (jax.sharding.Sharding, jax.sharding.PartitionSpec)):
        return value
    if isinstance(value, Mapping):
        raise checks.type_error(
            op,
            f"an array for {name!r}",
            f"a {type(value).__name__}",
            "Nest scopes with Scope.with_child, Scope.prefixed or Scope.from_nested.",
        )
    if not _is_array_like(value):
        raise checks.type_error(
            op,
            f"an array or Python scalar for {name!r}",
            f"{type(value).__name__}",
            "Convert it with jnp.asarray.",
        )
    dtype = np.dtype(value.dtype)
    if dtype.kind in "OSUM" or dtype.type is np.void:
        raise checks.type_error(op, f"a numeric or bool array for {name!r}", f"dtype {dtype}")
    return value


def _validated(op: str, mapping: Mapping[str, Any]) -> dict[str, Any]:
    """A sorted dict of ``mapping``'s checked names and values (a Scope's as they are)."""
    if isinstance(mapping, Scope):
        return mapping._data
    data = {_check_name(op, k): _check_value(op, k, v) for k, v in mapping.items()}
    return {k: data[k] for k in sorted(data)}


def _describe(value: Any) -> str:
    """``float32[3,4]`` for arrays, the type name for Python scalars and placeholders."""
    if _is_array_like(value):
        try:
            dtype = np.dtype(value.dtype).name
        except TypeError:
            dtype = str(value.dtype)
        return f"{dtype}[{','.join(str(d) for d in value.shape)}]"
    return type(value).__name__


def _missing_key(op: str, name: str, names: Iterable[str]) -> KeyError:
    """A ``KeyError`` naming ``name`` and the closest names in the scope."""
    names = list(names)
    under = [n for n in names if n.startswith(name + "/")]
    if under:
        hint = f"{name!r} is a prefix of {len(under)} name(s); use scope.child({name!r})."
    else:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        if close:
            hint = "Closest names: " + ", ".join(repr(n) for n in close) + "."
        elif names:
            hint = f"The scope holds {len(names)} name(s), none close."
        else:
            hint = "The scope is empty."
    return KeyError(checks.message(op, "a name in the scope", repr(name), hint))


# --------------------------------------------------------------------------- #
# Scope
# --------------------------------------------------------------------------- #


class Scope(Mapping[str, Any]):
    """An immutable mapping from ``/``-separated names to arrays; a JAX pytree.

    The names are static structure and the arrays are the leaves, flattened in
    sorted-name order, with ``jax.tree_util.DictKey(name)`` keys so that
    ``jax.tree_util.tree_flatten_with_path`` shows the names. A Scope passes
    through ``jit``, ``vmap`` and ``grad`` (the gradient of a Scope is a Scope
    with the same names) and through optax (``init``, ``update``,
    ``apply_updates``, ``optax.masked``) unchanged.

    Values are arrays (``jax.Array``, NumPy arrays, tracers, anything with
    ``shape`` and ``dtype``) or Python scalars, stored as given: nothing is
    converted or copied. ``None`` is accepted for pytree specs such as
    ``in_axes=Scope({"x": 0, "y": None})`` (JAX treats it as an empty
    subtree). Every method that changes something returns a new Scope. Names
    are non-empty strings of ``/``-separated, non-empty segments; a name may
    also be a prefix of others (``"a"`` and ``"a/b"``), except in
    :meth:`to_nested`.

    Equality is identity: ``a == b`` is ``a is b``, never an elementwise
    comparison of arrays, and a Scope is unhashable (like ``jax.Array``), so it
    cannot be a static ``jit`` argument. Compare contents with
    ``jax.tree.structure`` and ``chex.assert_trees_all_equal``.

    Args:
      mapping: optional mapping (or Scope) from names to arrays.

    Raises:
      TypeError: a name that is not a str, or a value that is neither an array
        nor a Python scalar.
      ValueError: an invalid name (empty, empty segment, leading or trailing
        ``/``).

    Examples:
      >>> import jax, jax.numpy as jnp, jaxops
      >>> params = jaxops.Scope({"dense/w": jnp.ones((2, 3)), "dense/b": jnp.zeros(3)})
      >>> params
      Scope({'dense/b': float32[3], 'dense/w': float32[2,3]})
      >>> params.names()
      ('dense/b', 'dense/w')
      >>> params.child("dense")["w"].shape
      (2, 3)
      >>> grads = jax.grad(lambda p: jnp.sum(p["dense/w"] @ p["dense/b"]))(params)
      >>> grads
      Scope({'dense/b': float32[3], 'dense/w': float32[2,3]})
      >>> [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(grads)[0]]
      ["['dense/b']", "['dense/w']"]

    Caffe2: a child ``Workspace`` (named blobs), as a value.
    """

    __slots__ = ("_data",)
    _data: dict[str, Any]

    def __init__(self, mapping: Mapping[str, Any] | None = None) -> None:
        if mapping is None:
            data = {}
        elif isinstance(mapping, Mapping):
            data = _validated("Scope", mapping)
        else:
            raise checks.type_error(
                "Scope", "a mapping from names to arrays", type(mapping).__name__
            )
        object.__setattr__(self, "_data", data)

    @classmethod
    def _make(cls, data: dict[str, Any]) -> Scope:
        """A Scope from an already valid dict, sorted here; no validation."""
        scope = object.__new__(cls)
        object.__setattr__(scope, "_data", {k: data[k] for k in sorted(data)})
        return scope

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Scope is immutable: use set, update or remove, not {name} = ...")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Scope is immutable.")

    def __reduce__(self) -> tuple[Any, ...]:
        return (Scope._make, (dict(self._data),))

    # Identity semantics, never elementwise; unhashable like jax.Array.
    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    __hash__ = None  # type: ignore[assignment]

    # ----------------------------------------------------------------- read

    def __getitem__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            _check_name("Scope", name)
            raise _missing_key("Scope", name, self._data) from None
        except TypeError:
            _check_name("Scope", name)
            raise

    def get(self, name: str, default: Any = None) -> Any:
        """``scope[name]``, or ``default`` when the name is absent.

        Examples:
          >>> import jaxops
          >>> jaxops.Scope({"a": 1.0}).get("b", 0.0)
          0.0
        """
        _check_name("Scope.get", name)
        return self._data.get(name, default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def names(self) -> tuple[str, ...]:
        """The names, sorted (the order of the pytree leaves)."""
        return tuple(self._data)

    def items(self) -> tuple[tuple[str, Any], ...]:  # type: ignore[override]
        """``(name, array)`` pairs in sorted-name order."""
        return tuple(self._data.items())

    def values(self) -> tuple[Any, ...]:  # type: ignore[override]
        """The arrays in sorted-name order (the pytree leaves)."""
        return tuple(self._data.values())

    def __repr__(self) -> str:
        entries = [f"{name!r}: {_describe(value)}" for name, value in self._data.items()]
        flat = "Scope({" + ", ".join(entries) + "})"
        if len(flat) <= 100:
            return flat
        return "Scope({\n" + "".join(f"    {e},\n" for e in entries) + "})"

    # --------------------------------------------------------------- update

    def set(self, name: str, value: Any) -> Scope:
        """A new Scope with ``name`` bound to ``value`` (added or replaced).

        Examples:
          >>> import jax.numpy as jnp, jaxops
          >>> jaxops.Scope().set("step", jnp.zeros((), jnp.int32))
          Scope({'step': int32[]})
        """
        _check_name("Scope.set", name)
        return Scope._make({**self._data, name: _check_value("Scope.set", name, value)})

    def update(self, other: Mapping[str, Any]) -> Scope:  # type: ignore[override]
        """A new Scope with every name of ``other`` (a mapping or Scope) added or replaced.

        Examples:
          >>> import jax.numpy as jnp, jaxops
          >>> jaxops.Scope({"a": jnp.ones(2)}).update({"a": jnp.ones(3), "b": 1.0})
          Scope({'a': float32[3], 'b': float})
        """
        if not isinstance(other, Mapping):
            raise checks.type_error("Scope.update", "a mapping or Scope", f"{type(other).__name__}")
        return Scope._make({**self._data, **_validated("Scope.update", other)})

    def remove(self, name: str) -> Scope:
        """A new Scope without ``name`` (``KeyError`` naming it when absent).

        Examples:
          >>> import jaxops
          >>> jaxops.Scope({"a": 1.0, "b": 2.0}).remove("a")
          Scope({'b': float})
        """
        _check_name("Scope.remove", name)
        if name not in self._data:
            raise _missing_key("Scope.remove", name, self._data)
        return Scope._make({k: v for k, v in self._data.items() if k != name})

    def _without(self, names: Iterable[str]) -> Scope:
        drop = set(names)
        return Scope._make({k: v for k, v in self._data.items() if k not in drop})

    # ------------------------------------------------------------ hierarchy

    def child(self, prefix: str) -> Scope:
        """The names under ``prefix/``, with the prefix stripped.

        Raises ``KeyError`` (naming the closest names) when no name starts with
        ``prefix/``.

        Examples:
          >>> import jaxops
          >>> jaxops.Scope({"enc/w": 1.0, "enc/attn/q": 2.0, "dec/w": 3.0}).child("enc")
          Scope({'attn/q': float, 'w': float})
        """
        _check_name("Scope.child", prefix, "prefix")
        start = prefix + "/"
        data = {k[len(start) :]: v for k, v in self._data.items() if k.startswith(start)}
        if not data:
            raise _missing_key("Scope.child", prefix, {k.rpartition("/")[0] for k in self._data})
        return Scope._make(data)

    def with_child(self, prefix: str, sub: Mapping[str, Any]) -> Scope:
        """A new Scope whose names under ``prefix/`` are exactly ``sub``'s, prefixed.

        Every name under ``prefix/`` is removed first (the subtree is replaced,
        not merged); a name equal to ``prefix`` itself is kept.

        Examples:
          >>> import jaxops
          >>> s = jaxops.Scope({"enc/w": 1.0, "enc/b": 2.0, "dec/w": 3.0})
          >>> s.with_child("enc", {"v": 4.0})
          Scope({'dec/w': float, 'enc/v': float})
        """
        _check_name("Scope.with_child", prefix, "prefix")
        if not isinstance(sub, Mapping):
            raise checks.type_error(
                "Scope.with_child", "`sub` to be a mapping or Scope", type(sub).__name__
            )
        start = prefix + "/"
        kept = {k: v for k, v in self._data.items() if not k.startswith(start)}
        sub_data = _validated("Scope.with_child", sub)
        return Scope._make({**kept, **{f"{prefix}/{k}": v for k, v in sub_data.items()}})

    def prefixed(self, prefix: str) -> Scope:
        """A new Scope with every name ``n`` renamed ``prefix/n``.

        Examples:
          >>> import jaxops
          >>> jaxops.Scope({"w": 1.0}).prefixed("layer0")
          Scope({'layer0/w': float})
        """
        _check_name("Scope.prefixed", prefix, "prefix")
        return Scope._make({f"{prefix}/{k}": v for k, v in self._data.items()})

    @classmethod
    def from_nested(cls, nested: Mapping[str, Any]) -> Scope:
        """A Scope from nested mappings: ``{"a": {"b": x}}`` gives the name ``"a/b"``.

        Empty sub-mappings hold no names and disappear. A key may itself hold
        ``/`` (``{"a/b": x}``), so two keys can flatten to the same name
        (``{"a/b": x, "a": {"b": y}}``): that is a ``ValueError`` naming both
        keys, never a silent choice of one value.

        Examples:
          >>> import jaxops
          >>> jaxops.Scope.from_nested({"enc": {"w": 1.0, "b": 2.0}, "step": 0})
          Scope({'enc/b': float, 'enc/w': float, 'step': int})
        """
        op = "Scope.from_nested"
        if not isinstance(nested, Mapping):
            raise checks.type_error(op, "a mapping", type(nested).__name__)
        flat: dict[str, Any] = {}
        origin: dict[str, str] = {}  # name -> the key path that gave it, e.g. "['a']['b']"

        def visit(prefix: str, where: str, node: Mapping[str, Any]) -> None:
            for key, value in node.items():
                _check_name(op, key, "key")
                name = f"{prefix}/{key}" if prefix else key
                here = f"{where}[{key!r}]"
                if isinstance(value, Mapping):
                    visit(name, here, value)
                    continue
                _check_name(op, name)
                if name in flat:
                    raise checks.value_error(
                        op,
                        "keys that flatten to distinct names",
                        f"{name!r} from both {origin[name]} and {here}",
                    )
                flat[name], origin[name] = value, here

        visit("", "", nested)
        return cls(flat)

    def to_nested(self) -> dict[str, Any]:
        """Nested dicts, one level per name segment (the inverse of :meth:`from_nested`).

        Raises ``ValueError`` when a name is also a prefix of another name
        (``"a"`` and ``"a/b"``), which nested dicts cannot represent.

        Examples:
          >>> import jaxops
          >>> jaxops.Scope({"enc/w": 1.0, "step": 0}).to_nested()
          {'enc': {'w': 1.0}, 'step': 0}
        """
        out: dict[str, Any] = {}
        for name, value in self._data.items():
            node = out
            *parents, leaf = name.split("/")
            for i, segment in enumerate(parents):
                node = node.setdefault(segment, {})
                if not isinstance(node, dict):
                    raise checks.value_error(
                        "Scope.to_nested",
                        "no name that is also a prefix of another name",
                        f"{'/'.join(parents[: i + 1])!r} and {name!r}",
                    )
            if leaf in node:
                raise checks.value_error(
                    "Scope.to_nested",
                    "no name that is also a prefix of another name",
                    f"{name!r} and names under {name + '/'!r}",
                )
            node[leaf] = value
        return out


def _scope_flatten_with_keys(scope: Scope):
    data = scope._data
    return [(jax.tree_util.DictKey(k), v) for k, v in data.items()], tuple(data)


def _scope_flatten(scope: Scope):
    data = scope._data
    return tuple(data.values()), tuple(data)


def _scope_unflatten(names: tuple[str, ...], leaves: Iterable[Any]) -> Scope:
    # No validation or conversion: JAX passes placeholders (None, object()).
    scope = object.__new__(Scope)
    object.__setattr__(scope, "_data", dict(zip(names, leaves, strict=True)))
    return scope


jax.tree_util.register_pytree_with_keys(
    Scope, _scope_flatten_with_keys, _scope_unflatten, _scope_flatten
)
jax.export.register_pytree_node_serialization(
    Scope,
    serialized_name="jaxops.Scope",
    serialize_auxdata=lambda names: json.dumps(list(names)).encode(),
    deserialize_auxdata=lambda data: tuple(json.loads(data.decode())),
)


def _as_scope(op: str, name: str, value: Any) -> Scope:
    if isinstance(value, Scope):
        return value
    if isinstance(value, Mapping):
        return Scope(value)
    raise checks.type_error(op, f"`{name}` to be a Scope", type(value).__name__)


# --------------------------------------------------------------------------- #
# Bindings and the workspace stack
# --------------------------------------------------------------------------- #


def _bindings(op: str, bindings: Any, *, unique_outer: bool = False) -> tuple[tuple[str, str], ...]:
    """``(inner, outer)`` pairs from a mapping or pairs; each inner name bound once."""
    if bindings is None:
        return ()
    if isinstance(bindings, Mapping):
        pairs = list(bindings.items())
    elif isinstance(bindings, (str, bytes)) or not isinstance(bindings, Iterable):
        raise checks.type_error(
            op, "bindings as a mapping or (inner, outer) pairs", type(bindings).__name__
        )
    else:
        pairs = list(bindings)
    out: list[tuple[str, str]] = []
    inner_seen: dict[str, str] = {}
    outer_seen: dict[str, str] = {}
    for pair in pairs:
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise checks.type_error(op, "each binding to be an (inner, outer) pair", repr(pair))
        inner = _check_name(op, pair[0], "inner name")
        outer = _check_name(op, pair[1], "outer name")
        if inner in inner_seen:
            raise checks.value_error(
                op,
                "unique inner names",
                f"{inner!r} bound to both {inner_seen[inner]!r} and {outer!r}",
            )
        if unique_outer and outer in outer_seen:
            raise checks.value_error(
                op,
                "each outer name bound once",
                f"{outer!r} bound to both {outer_seen[outer]!r} and {inner!r}",
            )
        inner_seen[inner] = outer
        outer_seen[outer] = inner
        out.append((inner, outer))
    return tuple(out)


def _bind(
    workspace: Scope, parent: Scope, pairs: Iterable[tuple[str, str]], *, skip_defined: bool
) -> Scope:
    """``workspace`` with each inner name reading ``parent[outer]``.

    A binding whose outer name is not in ``parent`` reads nothing. With
    ``skip_defined``, inner names already in ``workspace`` keep their values.
    """
    data = dict(workspace._data)
    for inner, outer in pairs:
        if outer not in parent._data or (skip_defined and inner in data):
            continue
        data[inner] = parent._data[outer]
    return Scope._make(data)


def check_bindings_match(a: Bindings, b: Bindings) -> None:
    """Raises ``ValueError`` ("bindings mismatch") unless two bindings are equal.

    Bindings map inner (workspace) names to outer (parent) names, given as
    mappings or ``(inner, outer)`` pairs; order does not matter. The message
    lists every difference.

    Args:
      a: the reference bindings.
      b: the bindings to test.

    Raises:
      ValueError: the bindings differ.

    Examples:
      >>> import jaxops
      >>> jaxops.check_bindings_match({"x": "data/x"}, [("x", "data/x")])
      >>> jaxops.check_bindings_match({"x": "data/x"}, {"x": "data/y"})
      Traceback (most recent call last):
      ...
      ValueError: check_bindings_match: expected equal bindings, got bindings mismatch: ...

    Caffe2: ``WorkspaceStack::checkBindingsMatch``.
    """
    op = "check_bindings_match"
    first, second = dict(_bindings(op, a)), dict(_bindings(op, b))
    differences = []
    for inner in sorted(first.keys() | second.keys()):
        if inner not in second:
            differences.append(f"{inner!r} -> {first[inner]!r} only in the first")
        elif inner not in first:
            differences.append(f"{inner!r} -> {second[inner]!r} only in the second")
        elif first[inner] != second[inner]:
            differences.append(f"{inner!r} -> {first[inner]!r} vs {inner!r} -> {second[inner]!r}")
    if differences:
        raise checks.value_error(
            op, "equal bindings", "bindings mismatch: " + "; ".join(differences)
        )


class WorkspaceStack:
    """Caffe2's workspace stack as an immutable pytree of :class:`Scope` s.

    Holds every workspace it has created (the pytree children) and a static
    ``top`` index (the aux data; -1 when empty). Pushing past the end creates a
    workspace; popping keeps it, so the next push reuses it. Every method
    returns a new stack. The structure (how many workspaces, ``top``) is static:
    push and pop in Python control flow (unrolled under ``jit``), not inside
    ``lax.scan``, ``while_loop`` or ``cond``.

    A *binding* maps an inner name (in the workspace) to an outer name (in the
    parent scope); bindings are a mapping or ``(inner, outer)`` pairs. A bound
    inner name reads a copy of the parent's array; a binding whose outer name
    is not in the parent reads nothing.

    Equality is identity and the stack is unhashable, like :class:`Scope`.

    Args:
      workspaces: the workspaces (Scopes), bottom first.
      top: index of the top workspace, ``-1 <= top < len(workspaces)``.

    Examples:
      >>> import jax.numpy as jnp, jaxops
      >>> parent = jaxops.Scope({"x": jnp.arange(3.0)})
      >>> stack, ws = jaxops.create_scope().push_forward(parent, {"in": "x"})
      >>> stack = stack.set_top(ws.set("out", 2 * ws["in"]))
      >>> stack, ws = stack.pop_gradient(parent)
      >>> ws["out"], stack.empty
      (Array([0., 2., 4.], dtype=float32), True)
      >>> len(stack.workspaces)  # kept for reuse
      1

    Caffe2: ``detail::WorkspaceStack``.
    """

    __slots__ = ("_top", "_workspaces")
    _workspaces: tuple[Scope, ...]
    _top: int

    def __init__(self, workspaces: Iterable[Scope] = (), top: int = -1) -> None:
        op = "WorkspaceStack"
        workspaces = tuple(workspaces)
        for i, ws in enumerate(workspaces):
            if not isinstance(ws, Scope):
                raise checks.type_error(op, f"workspaces[{i}] to be a Scope", type(ws).__name__)
        top = checks.static_int(op, "top", top, minimum=-1)
        if top >= len(workspaces):
            raise checks.value_error(op, f"top < len(workspaces) = {len(workspaces)}", f"top={top}")
        object.__setattr__(self, "_workspaces", workspaces)
        object.__setattr__(self, "_top", top)

    @classmethod
    def _make(cls, workspaces: Any, top: int) -> WorkspaceStack:
        stack = object.__new__(cls)
        object.__setattr__(stack, "_workspaces", workspaces)
        object.__setattr__(stack, "_top", top)
        return stack

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("WorkspaceStack is immutable: its methods return new stacks.")

    def __reduce__(self) -> tuple[Any, ...]:
        return (WorkspaceStack._make, (self._workspaces, self._top))

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        inner = ", ".join(repr(ws) for ws in self._workspaces)
        return f"WorkspaceStack(top={self._top}, workspaces=({inner}))"

    @property
    def workspaces(self) -> tuple[Scope, ...]:
        """Every workspace created so far, bottom first (including popped ones)."""
        return self._workspaces

    @property
    def top(self) -> int:
        """Index of the top workspace; -1 when empty. Static under ``jit``."""
        return self._top

    @property
    def empty(self) -> bool:
        """``top == -1`` (a Python bool)."""
        return self._top < 0

    def _with_top(self, workspace: Scope, top: int) -> WorkspaceStack:
        workspaces = list(self._workspaces)
        if top == len(workspaces):
            workspaces.append(workspace)
        else:
            workspaces[top] = workspace
        return WorkspaceStack._make(tuple(workspaces), top)

    def push_forward(
        self, parent: Scope, bindings: Bindings | None = None
    ) -> tuple[WorkspaceStack, Scope]:
        """Pushes a forward workspace whose bound inner names read ``parent``.

        Reuses ``workspaces[top + 1]`` when it exists, dropping its local
        copies of the bound inner names (its other names stay), else creates an
        empty workspace; then each inner name reads ``parent[outer]``, and
        ``top`` grows by one. The returned stack already holds the workspace;
        store changes with :meth:`set_top`.

        Args:
          parent: the outer Scope the bindings read.
          bindings: inner name -> outer name (mapping or pairs).

        Returns:
          ``(stack, workspace)``.

        Examples:
          >>> import jaxops
          >>> stack, ws = jaxops.create_scope().push_forward(jaxops.Scope({"x": 1.0}), {"a": "x"})
          >>> ws, stack.top
          (Scope({'a': float}), 0)

        Caffe2: ``WorkspaceStack::pushForwardWorkspace``.
        """
        op = "WorkspaceStack.push_forward"
        parent = _as_scope(op, "parent", parent)
        pairs = _bindings(op, bindings)
        top = self._top + 1
        if top < len(self._workspaces):
            workspace = self._workspaces[top]._without(inner for inner, _ in pairs)
        else:
            workspace = Scope()
        workspace = _bind(workspace, parent, pairs, skip_defined=False)
        return self._with_top(workspace, top), workspace

    def pop_gradient(
        self, parent: Scope, grad_bindings: Bindings | None = None
    ) -> tuple[WorkspaceStack, Scope | None]:
        """Pops the top workspace for the gradient pass (LIFO), or ``None`` when empty.

        Each gradient binding is added to the returned workspace unless its
        inner name is already defined there (the saved forward values win).
        ``top`` shrinks by one and the workspace is kept for reuse, as it was
        before the gradient bindings: a later pop of the reused workspace reads
        the parent's current gradients instead of skipping stale copies.

        Args:
          parent: the outer Scope the gradient bindings read.
          grad_bindings: inner name -> outer name (mapping or pairs).

        Returns:
          ``(stack, workspace)``, or ``(stack, None)`` when the stack is empty.

        Examples:
          >>> import jaxops
          >>> stack, _ = jaxops.create_scope().push_forward(jaxops.Scope({"x": 1.0}), {"a": "x"})
          >>> parent = jaxops.Scope({"x": 5.0, "g": 2.0})
          >>> stack, ws = stack.pop_gradient(parent, {"a": "x", "a_grad": "g"})
          >>> ws["a"], ws["a_grad"], stack.empty
          (1.0, 2.0, True)
          >>> stack.pop_gradient(parent)[1] is None
          True

        Caffe2: ``WorkspaceStack::popGradientWorkspace``.
        """
        op = "WorkspaceStack.pop_gradient"
        parent = _as_scope(op, "parent", parent)
        pairs = _bindings(op, grad_bindings)
        if self.empty:
            return self, None
        workspace = _bind(self._workspaces[self._top], parent, pairs, skip_defined=True)
        return WorkspaceStack._make(self._workspaces, self._top - 1), workspace

    def reuse_last_forward(
        self, parent: Scope, bindings: Bindings | None = None
    ) -> tuple[WorkspaceStack, Scope | None]:
        """The top workspace again, with the bindings added; ``top`` unchanged.

        Bound inner names read ``parent[outer]`` (replacing earlier values);
        every other name of the workspace is kept. ``None`` when empty.

        Returns:
          ``(stack, workspace)``, or ``(stack, None)`` when the stack is empty.

        Examples:
          >>> import jaxops
          >>> stack, ws = jaxops.create_scope().push_forward(jaxops.Scope())
          >>> stack = stack.set_top(ws.set("count", 1))
          >>> stack, ws = stack.reuse_last_forward(jaxops.Scope({"x": 2.0}), {"a": "x"})
          >>> ws, stack.top
          (Scope({'a': float, 'count': int}), 0)

        Caffe2: ``WorkspaceStack::reuseLastForwardWorkspace``.
        """
        op = "WorkspaceStack.reuse_last_forward"
        parent = _as_scope(op, "parent", parent)
        pairs = _bindings(op, bindings)
        if self.empty:
            return self, None
        workspace = _bind(self._workspaces[self._top], parent, pairs, skip_defined=False)
        return self._with_top(workspace, self._top), workspace

    def set_top(self, workspace: Scope) -> WorkspaceStack:
        """A stack whose top workspace is ``workspace`` (``ValueError`` when empty).

        Examples:
          >>> import jaxops
          >>> stack, ws = jaxops.create_scope().push_forward(jaxops.Scope())
          >>> stack.set_top(ws.set("y", 1.0)).workspaces
          (Scope({'y': float}),)
        """
        op = "WorkspaceStack.set_top"
        workspace = _as_scope(op, "workspace", workspace)
        if self.empty:
            raise checks.value_error(op, "a non-empty stack", "top=-1", "Push a workspace first.")
        return self._with_top(workspace, self._top)

    def clear(self) -> WorkspaceStack:
        """An empty stack (``top = -1``) that keeps its workspaces for reuse.

        Examples:
          >>> import jaxops
          >>> stack, _ = jaxops.create_scope().push_forward(jaxops.Scope())
          >>> cleared = stack.clear()
          >>> cleared.empty, len(cleared.workspaces)
          (True, 1)
        """
        return WorkspaceStack._make(self._workspaces, -1)


def _stack_flatten_with_keys(stack: WorkspaceStack):
    return [(jax.tree_util.GetAttrKey("workspaces"), stack._workspaces)], stack._top


def _stack_flatten(stack: WorkspaceStack):
    return (stack._workspaces,), stack._top


def _stack_unflatten(top: int, children: Any) -> WorkspaceStack:
    # No validation: JAX may pass placeholders for the workspaces.
    (workspaces,) = children
    return WorkspaceStack._make(workspaces, top)


jax.tree_util.register_pytree_with_keys(
    WorkspaceStack, _stack_flatten_with_keys, _stack_unflatten, _stack_flatten
)


def _check_stack(op: str, stack: Any) -> WorkspaceStack:
    if not isinstance(stack, WorkspaceStack):
        raise checks.type_error(op, "a WorkspaceStack", type(stack).__name__)
    return stack


def create_scope(stack: WorkspaceStack | None = None) -> WorkspaceStack:
    """An empty workspace stack, or ``stack.clear()`` (its workspaces kept for reuse).

    Args:
      stack: optional stack to clear.

    Returns:
      A :class:`WorkspaceStack` with ``top == -1``.

    Examples:
      >>> import jaxops
      >>> jaxops.create_scope()
      WorkspaceStack(top=-1, workspaces=())

    Caffe2: ``CreateScope``.
    """
    if stack is None:
        return WorkspaceStack()
    return _check_stack("create_scope", stack).clear()


def has_scope(stack: WorkspaceStack) -> bool:
    """``not stack.empty``: whether a workspace is pushed (a Python bool; ``top`` is static).

    Examples:
      >>> import jaxops
      >>> stack = jaxops.create_scope()
      >>> jaxops.has_scope(stack), jaxops.has_scope(stack.push_forward(jaxops.Scope())[0])
      (False, True)

    Caffe2: ``HasScope``.
    """
    return not _check_stack("has_scope", stack).empty


def do(
    stack: WorkspaceStack,
    parent: Scope,
    fn: Callable[[Scope], Scope],
    bindings: Bindings,
    *,
    reuse_workspace: bool = False,
) -> tuple[WorkspaceStack, Scope]:
    """Runs ``fn`` in a child workspace and writes the bound names back to ``parent``.

    Pushes a forward workspace (with ``reuse_workspace``, reuses the top one,
    so ``fn`` sees its earlier locals; an empty stack still pushes), runs
    ``workspace = fn(workspace)``, stores the result as the top workspace, then
    copies every bound inner name back to its outer name in ``parent``,
    creating the outer name if needed. A binding whose outer name is not yet in
    ``parent`` reads nothing, so ``fn`` must define that inner name. The
    workspace stays pushed; pop it with :meth:`WorkspaceStack.pop_gradient`.

    Args:
      stack: the workspace stack.
      parent: the outer Scope.
      fn: ``Scope -> Scope``, traceable when ``do`` runs under ``jit``.
      bindings: inner name -> outer name (mapping or pairs); each outer name
        bound once, inner names unique.
      reuse_workspace: static bool.

    Returns:
      ``(stack, parent)``, both updated.

    Raises:
      TypeError: ``fn`` does not return a Scope, or arguments of the wrong type.
      ValueError: an outer name bound twice, a repeated inner name, or a bound
        inner name that ``fn`` leaves undefined.

    Examples:
      >>> import jax.numpy as jnp, jaxops
      >>> parent = jaxops.Scope({"x": jnp.arange(3.0)})
      >>> step = lambda ws: ws.set("y", ws["x"] + 1).set("tmp", ws["x"])
      >>> stack, parent = jaxops.do(jaxops.create_scope(), parent, step, {"x": "x", "y": "out"})
      >>> parent["out"], stack.workspaces[0].names()
      (Array([1., 2., 3.], dtype=float32), ('tmp', 'x', 'y'))

    Caffe2: ``Do`` (forward; with a workspace stack and ``reuse_workspace``).
    """
    op = "do"
    _check_stack(op, stack)
    parent = _as_scope(op, "parent", parent)
    if not callable(fn):
        raise checks.type_error(op, "`fn` to be callable", type(fn).__name__)
    reuse_workspace = checks.static_bool(op, "reuse_workspace", reuse_workspace)
    pairs = _bindings(op, bindings, unique_outer=True)
    if reuse_workspace and not stack.empty:
        stack, workspace = stack.reuse_last_forward(parent, pairs)
    else:
        stack, workspace = stack.push_forward(parent, pairs)
    result = fn(workspace)
    if not isinstance(result, Scope):
        raise checks.type_error(op, "`fn` to return a Scope", type(result).__name__)
    undefined = [f"{inner!r} (bound to {outer!r})" for inner, outer in pairs if inner not in result]
    if undefined:
        raise checks.value_error(
            op, "`fn` to define every bound inner name", "undefined " + ", ".join(undefined)
        )
    stack = stack.set_top(result)
    return stack, parent.update({outer: result[inner] for inner, outer in pairs})
