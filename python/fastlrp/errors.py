"""Exceptions shared by the IR, the op registry and the importers."""

from __future__ import annotations

__all__ = ["GraphError"]


class GraphError(ValueError):
    """A graph is malformed: names the node and what is wrong."""
