"""Exceptions shared by the IR, the op registry and the importers."""

from __future__ import annotations

__all__ = ["GraphError", "GraphFileError", "InputError", "UnsupportedLayerError"]


class GraphError(ValueError):
    """A graph is malformed: names the node and what is wrong."""


class GraphFileError(GraphError):
    """A graph file cannot be loaded: the message names the file and what is wrong
    with it (not a graph file, truncated or damaged, a malformed header, a node
    that does not check, a format newer than this fastlrp)."""


class UnsupportedLayerError(GraphError):
    """An importer met a layer (module, function, Keras layer, ATen op) it cannot
    translate exactly: the message names the layer, where it is and why, and says
    where the supported layer types are listed and how to add one."""

    HINT = ("(fastlrp.ops.names() lists the supported layer types; a new one is an op of the registry: "
            "see docs/adding-an-op.md in the fastlrp repository; a layer the IR has can be given another "
            "rule by its type or node name in a composite)")

    def __init__(self, message: str = ""):
        message = str(message)
        super().__init__(message if self.HINT in message else f"{message} {self.HINT}")


class InputError(ValueError):
    """The data (or the target) given to an Explainer cannot be explained as it is."""
