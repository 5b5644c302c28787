"""Exceptions shared by the IR, the op registry and the importers."""

from __future__ import annotations

__all__ = ["GraphError", "InputError", "UnsupportedLayerError"]


class GraphError(ValueError):
    """A graph is malformed: names the node and what is wrong."""


class UnsupportedLayerError(GraphError):
    """An importer met a layer (module, function, Keras layer, ATen op) it cannot
    translate exactly: the message names the layer, where it is and why."""


class InputError(ValueError):
    """The data (or the target) given to an Explainer cannot be explained as it is."""
