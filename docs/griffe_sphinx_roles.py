"""A Griffe extension for the docs site: Sphinx roles in jaxops docstrings become links.

The docstrings cross-reference with Sphinx roles (``:func:`lengths_top_k```,
``:meth:`WorkspaceStack.pop_gradient```, ``:class:`Scope```), which read well
in ``help()`` but mean nothing to Markdown. Once Griffe has loaded the
package, and before mkdocstrings renders anything, each role whose target is a
public name (one of ``jaxops.__all__``, a member of one, or a member of the
public class the docstring belongs to) becomes an autorefs link to that
name's reference entry; any other target (a private helper) becomes plain
code. Nothing is imported, and the sources are left as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:func|meth|class|attr|data|obj|mod):`~?(?P<target>[^`]+)`(?P<plural> s\b)?")


def _resolves(pkg: griffe.Object, public: set[str], path: str) -> bool:
    """Whether ``jaxops.<path>`` names a public object or a public member of one."""
    head, *rest = path.split(".")
    if head not in public or any(part.startswith("_") for part in rest):
        return False
    try:
        pkg[path]
    except Exception:  # a missing member, or an alias Griffe cannot resolve
        return False
    return True


def _owner(obj: griffe.Object, public: set[str]) -> str | None:
    """The public class whose docstrings ``obj``'s belongs to, if any."""
    while obj is not None:
        if obj.is_class and obj.name in public:
            return obj.name
        obj = obj.parent
    return None


def _rewrite(obj: griffe.Object, pkg: griffe.Object, public: set[str]) -> None:
    def link(match: re.Match[str]) -> str:
        target = match["target"].removeprefix(f"{pkg.name}.")
        text = f"`{match['target']}`" + ("s" if match["plural"] else "")
        owner = _owner(obj, public)
        candidates = [target] + ([f"{owner}.{target}"] if owner else [])
        for path in candidates:
            if _resolves(pkg, public, path):
                return f"[{text}][{pkg.name}.{path}]"
        return text

    if obj.docstring is not None:
        obj.docstring.value = ROLE.sub(link, obj.docstring.value)
    for member in obj.members.values():
        if not member.is_alias:
            _rewrite(member, pkg, public)


class SphinxRoles(griffe.Extension):
    """Rewrites Sphinx roles in docstrings into autorefs links or plain code."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        del kwargs
        public = {str(name) for name in (pkg.exports or ())}
        _rewrite(pkg, pkg, public)

    # Griffe before 2.0 calls the same event by this name.
    on_package_loaded = on_package
