"""Import PyTorch models into the fastlrp graph IR through ``torch.fx``.

``from_torch(module, example_input)`` traces the module symbolically (so residual
adds, ``torch.cat``, ``view``/``flatten`` and functional activations written in
``forward`` are seen), runs the example input through the traced graph to learn
every tensor's shape, and converts node by node. Parameters are copied to
float64 NumPy arrays; the user's model is never modified (its train/eval mode
is restored after the import).

A ``torch.export.ExportedProgram`` or a TorchScript module is handed to
:mod:`fastlrp.importers.torch_export`. Both front-ends share one lowering
(:mod:`fastlrp.importers.torch_lowering`) and then run the IR passes once
(:func:`fastlrp.passes.optimize`):

- a BatchNorm is folded into the dense/conv layer before it, or into the input side
  of the dense layer or unpadded conv after it, where that is exact; any other
  BatchNorm stays a ``batchnorm`` node and a warning names it;
- a softmax / log_softmax / sigmoid at the output is stripped (with a warning) unless
  ``keep_output_activation=True``; a softmax elsewhere is an error.

torch is imported lazily by :func:`from_torch`, so importing this module does
not need torch.
"""

from __future__ import annotations

import numpy as np

from ..graph import Graph
from . import torch_export
from .torch_lowering import Converter, UnsupportedLayerError, lower, propagate

__all__ = ["from_torch", "UnsupportedLayerError"]


# --------------------------------------------------------------------------------------------
# public entry point


def _first_rank(torch, gm, modules):
    """Per-sample rank the model expects, judged from the first rank-defining layer, or None."""
    nn = torch.nn
    ranks = ((nn.Linear, 1), (nn.Conv1d, 2), (nn.MaxPool1d, 2), (nn.AvgPool1d, 2), (nn.AdaptiveAvgPool1d, 2),
             (nn.Conv2d, 3), (nn.MaxPool2d, 3), (nn.AvgPool2d, 3), (nn.AdaptiveAvgPool2d, 3), (nn.BatchNorm2d, 3))
    for n in gm.graph.nodes:
        if n.op == "call_module":
            mod = modules.get(n.target)
            for cls, r in ranks:
                if isinstance(mod, cls):
                    return r
            if isinstance(mod, (nn.Flatten, nn.BatchNorm1d)):
                return None
        elif n.op in ("call_function", "call_method") and n.op != "placeholder":
            name = getattr(n.target, "__name__", n.target) if not isinstance(n.target, str) else n.target
            if name in ("flatten", "view", "reshape", "cat", "mean", "squeeze", "unsqueeze", "permute", "transpose"):
                return None
            if name in ("max_pool1d", "avg_pool1d", "adaptive_avg_pool1d"):
                return 2
            if name in ("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d"):
                return 3
    return None


def from_torch(module, example_input=None, *, keep_output_activation: bool = False, name: str | None = None) -> Graph:
    """Convert a PyTorch model to a fastlrp :class:`~fastlrp.graph.Graph`.

    Parameters
    ----------
    module : torch.nn.Module, torch.export.ExportedProgram or torch.jit.ScriptModule
        The model. An ``nn.Module`` is traced with ``torch.fx.symbolic_trace`` in eval
        mode and is not modified (its train/eval mode is restored afterwards). An
        ``ExportedProgram`` (``torch.export.export`` / ``torch.export.load``) is
        converted from its ATen-level graph, and a TorchScript module
        (``torch.jit.script`` / ``torch.jit.trace`` / ``torch.jit.load``) is first
        converted to an ExportedProgram (see :mod:`fastlrp.importers.torch_export`).
        Both need no Python source of the model.
    example_input : torch.Tensor or array-like
        One input, with a batch axis (``(N, C, H, W)``, usual) or without one
        (``(C, H, W)``); used to learn every tensor's shape. For an ``nn.Module``,
        whether it has a batch axis is judged from the first layer that fixes the rank
        (Linear: 1 axis, Conv1d/pool1d: 2, Conv2d/pool2d/BatchNorm2d: 3); when that is
        ambiguous (the model starts with a Flatten, a view or a BatchNorm1d) an input
        with 2 or more axes is taken to have a batch axis. Optional for an
        ``ExportedProgram`` (default: the program's own example inputs).
    keep_output_activation : bool
        Keep a final softmax / log_softmax / sigmoid as an activation node instead
        of stripping it (default: strip, with a warning, and explain the logits).
    name : str, optional
        Model name stored in ``graph.meta["name"]`` (default: the class name).

    Raises
    ------
    UnsupportedLayerError
        For modules, functions or ATen ops without an equivalent, naming the module
        type, function or op and its place (module path or fx node name); also when
        tracing fails.
    """
    import torch
    import torch.fx

    if torch_export.is_exported_program(module) or torch_export.is_script_module(module):
        return torch_export.from_exported(module, example_input, keep_output_activation=keep_output_activation,
                                          name=name)
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_torch expects a torch.nn.Module, a torch.export.ExportedProgram or a TorchScript "
                        f"module, got {type(module).__name__}")
    if example_input is None:
        raise TypeError(f"from_torch({type(module).__name__}) needs an example input (one batch) to learn the shapes")
    x = example_input if isinstance(example_input, torch.Tensor) else torch.as_tensor(np.asarray(example_input))
    modes = {m: m.training for m in module.modules()}
    try:
        module.eval()
        try:
            gm = torch.fx.symbolic_trace(module)
        except Exception as e:  # noqa: BLE001 - report any tracing failure clearly
            raise UnsupportedLayerError(
                f"torch.fx could not trace {type(module).__name__}: {type(e).__name__}: {e}. fastlrp needs a model "
                "whose forward has no data-dependent control flow (if/for on tensor values)"
            ) from e
        modules = dict(gm.named_modules())
        try:
            param = next(module.parameters())
            x = x.to(dtype=param.dtype, device=param.device)
        except StopIteration:
            x = x.to(dtype=torch.get_default_dtype()) if not x.is_floating_point() else x
        rank = _first_rank(torch, gm, modules)
        batched = not (x.ndim == 1 or (rank is not None and x.ndim == rank))
        xb = x if batched else x.unsqueeze(0)
        values, tensor_nodes, consts = propagate(torch, gm, xb)
    finally:
        for m, t in modes.items():
            m.training = t

    conv = Converter(torch, gm, values, tensor_nodes, consts)
    meta = {"importer": "fastlrp.importers.torch", "framework": f"torch {torch.__version__}",
            "name": name if name is not None else type(module).__name__, "layout": "channels_first"}
    return lower(conv, meta, keep_output_activation)

