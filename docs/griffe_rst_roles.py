"""A griffe extension for the API reference: the docstrings' reST roles as Markdown code.

The docstrings are written for ``help()`` and Sphinx-style readers (``:func:`instrument```,
``:class:`~streamsentinel.BreakerConfig```); mkdocstrings renders Markdown, where such a role shows
as literal text. This turns each role into inline code of its target (``~`` keeps the last part),
so the page reads as the docstring means. Loaded by ``mkdocs.yml`` (mkdocstrings' ``extensions``).
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

ROLE = re.compile(
    r":(?:py:)?(?:func|class|meth|attr|mod|data|exc|obj|const):`(~?)([^`]+)`"
)


def plain(text: str) -> str:
    """``text`` with every reST role as Markdown code: ``:func:`~a.b``` -> ```b```."""
    return ROLE.sub(
        lambda m: f"`{m[2].rsplit('.', 1)[-1] if m[1] else m[2]}`", text
    )


class RstRoles(Extension):
    """Rewrites the roles of every docstring griffe loads."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain(obj.docstring.value)

    def on_package(self, *, pkg: Object, **kwargs: Any) -> None:
        # The package itself is not among the objects on_object sees.
        self.on_object(obj=pkg)
