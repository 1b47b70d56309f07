"""Runs every docstring example in jaxops under the suite's strict promotion rules."""

import doctest
import importlib
import pkgutil

import pytest

import jaxops._src

MODULES = sorted(m.name for m in pkgutil.iter_modules(jaxops._src.__path__, "jaxops._src."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS, verbose=False
    )
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


def test_every_public_name_has_examples():
    import jaxops

    missing = [
        name for name in jaxops.__all__ if ">>>" not in (getattr(jaxops, name).__doc__ or "")
    ]
    assert not missing, f"public names without docstring examples: {missing}"
