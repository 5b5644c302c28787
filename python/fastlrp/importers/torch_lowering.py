"""The torch lowering shared by both PyTorch front-ends.

:func:`fastlrp.importers.torch.from_torch` traces an ``nn.Module`` with ``torch.fx``;
:mod:`fastlrp.importers.torch_export` reads the ATen-level graph of a
``torch.export.ExportedProgram`` or a TorchScript module. Both hand their fx graph to
this module: :func:`propagate` runs the example input through it to learn every
tensor's shape, :class:`Converter` translates it node by node into IR nodes (a
BatchNorm becomes a ``batchnorm`` node with per-channel ``scale``/``shift``, a softmax
an ``activation`` node), and :func:`lower` builds the :class:`~fastlrp.graph.Graph` and
runs the IR passes once (:func:`fastlrp.passes.optimize`: BatchNorm folding,
output-activation stripping, dead-node pruning).

Only fx nodes the output depends on are translated, so dead code that has no IR
equivalent (shape asserts, guards, unused branches) is skipped rather than reported.

torch is never imported here: the front-ends pass their ``torch`` module in.
"""

from __future__ import annotations

import operator
import warnings

import numpy as np

from .. import passes
from ..errors import UnsupportedLayerError
from ..graph import Graph, GraphError, Node, unique_name

__all__ = ["Converter", "Meta", "UnsupportedLayerError", "lower", "propagate", "to_numpy"]

# --------------------------------------------------------------------------------------------
# helpers


class Meta:
    """A non-tensor value in the traced graph (an int from ``x.size(0)``, a shape, a constant)."""

    def __init__(self, value, origin):
        self.value = value
        self.origin = origin


class BatchMoved:
    """A permute that moves the batch axis (timm's ``qkv.permute(2, 0, 3, 1, 4)``): kept
    symbolic until ``unbind(0)`` / ``select(0, i)`` / ``[i]`` takes it apart again.
    ``x``: the IR node permuted; ``perm``: the permutation of its full (batched) axes."""

    def __init__(self, x, perm, origin):
        self.x, self.perm, self.origin = x, tuple(perm), origin


def _arg(node, i, name, default=None):
    """Positional argument ``i`` or keyword ``name`` of an fx node."""
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _tup(v, d):
    if isinstance(v, (list, tuple)):
        v = tuple(int(x) for x in v)
        if len(v) == 1 and d > 1:
            v = v * d
        return v
    return (int(v),) * d


def to_numpy(t):
    """Copy a tensor to a float64 NumPy array (never a view of the model's storage)."""
    if isinstance(t, np.ndarray):
        return np.array(t, dtype=np.float64)
    return t.detach().cpu().double().numpy().copy()


def _type_name(mod):
    cls = type(mod)
    if cls.__module__.startswith("torch.nn"):
        return f"nn.{cls.__name__}"
    return f"{cls.__module__}.{cls.__name__}"


def _func_name(target):
    if isinstance(target, str):
        return target
    mod = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", None) or repr(target)
    if mod in ("_operator", "operator"):
        return f"operator.{name}"
    if mod.startswith("torch.nn.functional") or mod == "torch._C._nn":
        return f"F.{name}"
    if mod.startswith("torch"):
        return f"torch.{name}"
    return f"{mod}.{name}" if mod else name


def _live_nodes(graph) -> set:
    """The fx nodes the output depends on, plus every placeholder (the model's inputs)."""
    out = [n for n in graph.nodes if n.op == "output"]
    live = {n for n in graph.nodes if n.op == "placeholder"}
    stack = list(out)
    while stack:
        n = stack.pop()
        if n in live and n.op != "placeholder":
            continue
        live.add(n)
        stack.extend(a for a in n.all_input_nodes if a not in live)
    return live


# --------------------------------------------------------------------------------------------
# the converter


class Converter:
    """Translates a torch.fx graph (modules, functions, Tensor methods) into IR nodes.

    ``values``, ``tensor_nodes`` and ``consts`` come from :func:`propagate`. The ATen
    front-end subclasses it (:mod:`fastlrp.importers.torch_export`).
    """

    #: a forward returning a 1-tuple ``(y,)`` counts as returning ``y`` (exported programs flatten outputs)
    unwrap_output_tuple = False

    def __init__(self, torch, gm, values, tensor_nodes, consts=None):
        self.torch = torch
        self.gm = gm
        self.values = values  # fx node name -> shape tuple (tensors) or python value
        self.tensor_nodes = tensor_nodes  # names of fx nodes whose value is a tensor
        self.consts = consts or {}  # fx node name -> tensor, for tensors that do not depend on the input
        self.modules = dict(gm.named_modules())
        self.nodes: list[Node] = []
        self.env: dict = {}  # fx node -> graph node name, or Meta
        self.used_names: set = set()
        self._build_tables()

    # -- tables -------------------------------------------------------------------
    def _build_tables(self):
        torch = self.torch
        F = torch.nn.functional
        nn = torch.nn
        T = torch.Tensor

        def ids(*fs):
            return [f for f in fs if f is not None]

        g = lambda mod, n: getattr(mod, n, None)  # noqa: E731
        self.fn_kind: dict = {}

        def reg(kind, *fs):
            for f in ids(*fs):
                self.fn_kind[f] = kind

        reg("add", operator.add, operator.iadd, torch.add, g(T, "add"), g(T, "__add__"), g(T, "__iadd__"))
        reg("sub", operator.sub, operator.isub, torch.sub, g(torch, "subtract"))
        reg("mul", operator.mul, operator.imul, torch.mul, g(torch, "multiply"))
        reg("div", operator.truediv, operator.itruediv, torch.div, g(torch, "divide"), g(torch, "true_divide"))
        reg("neg", operator.neg, torch.neg, g(torch, "negative"))
        reg("cat", torch.cat, g(torch, "concat"), g(torch, "concatenate"))
        reg("flatten", torch.flatten)
        reg("reshape", torch.reshape, torch.squeeze, torch.unsqueeze)
        reg("permute", torch.permute)
        reg("transpose", torch.transpose, g(torch, "swapaxes"), g(torch, "swapdims"))
        reg("relu", F.relu, torch.relu, g(torch, "relu_"), g(F, "relu_"))
        reg("leaky_relu", F.leaky_relu, g(F, "leaky_relu_"))
        reg("elu", F.elu, g(F, "elu_"))
        reg("tanh", torch.tanh, g(F, "tanh"))
        reg("sigmoid", torch.sigmoid, g(F, "sigmoid"))
        reg("gelu", F.gelu)
        reg("silu", F.silu)
        reg("softplus", F.softplus)
        reg("relu6", F.relu6)
        reg("hardtanh", F.hardtanh, g(F, "hardtanh_"))
        reg("hardswish", F.hardswish)
        reg("hardsigmoid", F.hardsigmoid)
        reg("clamp", torch.clamp, g(torch, "clip"), g(torch, "clamp_"))
        reg("softmax", F.softmax, torch.softmax)
        reg("log_softmax", F.log_softmax, torch.log_softmax)
        reg("dropout", F.dropout, g(F, "dropout1d"), g(F, "dropout2d"), g(F, "dropout3d"), g(F, "alpha_dropout"),
            g(F, "feature_alpha_dropout"), g(torch, "dropout"))
        reg("mean", torch.mean)
        reg("adaptive_avg_pool", F.adaptive_avg_pool1d, F.adaptive_avg_pool2d)
        reg("max_pool", F.max_pool1d, F.max_pool2d, g(torch, "max_pool1d"), g(torch, "max_pool2d"))
        reg("avg_pool", F.avg_pool1d, F.avg_pool2d, g(torch, "avg_pool1d"))
        reg("pad", F.pad)
        reg("interpolate", F.interpolate, g(F, "upsample"))
        reg("chunk", torch.chunk)
        reg("split", torch.split)
        reg("unbind", torch.unbind)
        reg("narrow", torch.narrow)
        reg("select", torch.select)
        reg("layer_norm", F.layer_norm)
        reg("rms_norm", g(F, "rms_norm"))
        reg("linear", F.linear)
        reg("conv", F.conv1d, F.conv2d)
        reg("conv_transpose", F.conv_transpose1d, F.conv_transpose2d)
        reg("batch_norm", F.batch_norm)
        reg("matmul", operator.matmul, torch.matmul, torch.bmm)
        reg("sdpa", g(F, "scaled_dot_product_attention"))
        reg("einsum", torch.einsum)
        self.fn_dims = {F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.max_pool1d: 1, F.max_pool2d: 2,
                        F.avg_pool1d: 1, F.avg_pool2d: 2}
        for n, d in (("max_pool1d", 1), ("max_pool2d", 2), ("avg_pool1d", 1)):
            if hasattr(torch, n):
                self.fn_dims[getattr(torch, n)] = d

        self.method_kind = {
            "add": "add", "add_": "add", "__add__": "add", "__iadd__": "add", "__radd__": "add",
            "sub": "sub", "sub_": "sub", "__sub__": "sub", "mul": "mul", "mul_": "mul", "__mul__": "mul",
            "__rmul__": "mul", "div": "div", "div_": "div", "__truediv__": "div", "neg": "neg",
            "__neg__": "neg",
            "view": "reshape", "reshape": "reshape", "flatten": "flatten", "squeeze": "reshape",
            "unsqueeze": "reshape", "view_as": "reshape", "reshape_as": "reshape",
            "contiguous": "identity", "clone": "identity", "detach": "identity",
            "permute": "permute", "transpose": "transpose", "swapaxes": "transpose",
            "relu": "relu", "relu_": "relu", "tanh": "tanh", "tanh_": "tanh", "sigmoid": "sigmoid",
            "sigmoid_": "sigmoid", "softmax": "softmax", "log_softmax": "log_softmax", "mean": "mean",
            "clamp": "clamp", "clamp_": "clamp", "clip": "clamp", "clip_": "clamp",
            "chunk": "chunk", "split": "split", "unbind": "unbind", "narrow": "narrow", "select": "select",
            "size": "meta", "dim": "meta",
            "matmul": "matmul", "__matmul__": "matmul", "bmm": "matmul", "expand": "expand",
        }

        self.act_modules = {
            nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.ELU: "elu", nn.Tanh: "tanh",
            nn.Sigmoid: "sigmoid", nn.GELU: "gelu", nn.SiLU: "silu", nn.Softplus: "softplus",
            nn.Softmax: "softmax", nn.LogSoftmax: "log_softmax", nn.ReLU6: "relu6", nn.Hardtanh: "hardtanh",
            nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid",
        }
        self.pad_modules = tuple(
            c for c in (g(nn, f"{kind}Pad{d}d") for kind in ("Zero", "Constant") for d in (1, 2, 3)) if c is not None
        )
        self.identity_modules = tuple(
            c for c in (nn.Identity, nn.Dropout, g(nn, "Dropout1d"), nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                        nn.FeatureAlphaDropout) if c is not None
        )

    # -- bookkeeping ----------------------------------------------------------------------
    def unique(self, name):
        return unique_name(name, self.used_names)

    def add(self, fxnode, op, inputs, attrs=None, params=None, name=None, source=""):
        nm = self.unique(name or fxnode.name)
        params = {k: np.asarray(v, dtype=np.float64) for k, v in (params or {}).items() if v is not None}
        self.nodes.append(Node(nm, op, list(inputs), dict(attrs or {}), params, (), source))
        self.env[fxnode] = nm
        return nm

    def where(self, fxnode):
        if fxnode.op == "call_module":
            return f"'{fxnode.target}'"
        return f"'{fxnode.name}'"

    def unsupported(self, fxnode, what, why=""):
        return UnsupportedLayerError(
            f"unsupported {what} at {self.where(fxnode)}" + (f": {why}" if why else "")
        )

    def shape(self, fxnode):
        """Full (batched) output shape of an fx node."""
        v = self.values.get(fxnode.name)
        if not isinstance(v, tuple) or not all(isinstance(s, int) for s in v) or fxnode.name not in self.tensor_nodes:
            raise UnsupportedLayerError(f"fx node '{fxnode.name}' ({fxnode.op} {_func_name(fxnode.target)}) "
                                        f"does not produce a single tensor")
        return v

    def sample_shape(self, fxnode):
        return self.shape(fxnode)[1:]

    def tensor_input(self, fxnode, arg, what):
        """The graph node name of a tensor argument; errors for constants and non-graph values."""
        torch = self.torch
        if isinstance(arg, torch.fx.Node):
            v = self.env.get(arg)
            if isinstance(v, str):
                return v
            if isinstance(v, Meta):
                raise self.unsupported(fxnode, what, f"operand '{arg.name}' is a constant or parameter "
                                       f"({v.origin}), not a tensor computed from the input")
            if isinstance(v, BatchMoved):
                raise self.unsupported(fxnode, what, f"operand '{arg.name}' moves the batch axis ({v.origin}); "
                                       "only unbind(0) / select(0, i) / [i] of such a permute is supported")
        raise self.unsupported(fxnode, what, f"operand {arg!r} is a constant, not a tensor computed from the input")

    def check_batch(self, fxnode, what):
        """The op must keep the batch axis in front."""
        ins = [a for a in fxnode.all_input_nodes if isinstance(self.env.get(a), str)]
        if not ins:
            return
        b = self.shape(ins[0])[0]
        out = self.shape(fxnode)
        if len(out) < 1 or out[0] != b or (b == 1 and len(out) < 2):
            raise self.unsupported(fxnode, what, f"it changes the batch axis (input {self.shape(ins[0])} -> output "
                                   f"{out}); only per-sample reshapes are supported")

    # -- main loop ------------------------------------------------------------------------
    def run(self):
        torch = self.torch
        out_fx = None
        live = _live_nodes(self.gm.graph)
        for n in self.gm.graph.nodes:
            if n not in live:
                continue  # dead code (unused branches, shape asserts, guards) is not converted
            if n.op == "placeholder":
                if n.name not in self.tensor_nodes:
                    # extra (default) arguments of forward are constants
                    self.env[n] = Meta(self.values.get(n.name), f"argument '{n.name}'")
                    continue
                if any(isinstance(v, str) for v in self.env.values()):
                    raise UnsupportedLayerError(
                        f"the model takes more than one tensor input ('{n.name}'); only single-input models are supported")
                nm = self.unique("input")
                shape = self.sample_shape(n)
                self.nodes.append(Node(nm, "input", [], {"shape": shape}, {}, shape, f"input '{n.name}'"))
                self.env[n] = nm
            elif n.op == "get_attr":
                self.env[n] = Meta(self.consts.get(n.name), f"attribute '{n.target}'")
            elif n.op == "call_module":
                self.convert_module(n)
            elif n.op == "call_function":
                self.convert_function(n, n.target, _func_name(n.target))
            elif n.op == "call_method":
                self.convert_method(n)
            elif n.op == "output":
                out_fx = n
            else:  # pragma: no cover
                raise self.unsupported(n, f"fx op '{n.op}'")
        arg = out_fx.args[0]
        if self.unwrap_output_tuple and isinstance(arg, (tuple, list)) and len(arg) == 1:
            arg = arg[0]
        if not isinstance(arg, torch.fx.Node) or not isinstance(self.env.get(arg), str):
            raise UnsupportedLayerError(
                f"the model output must be a single tensor computed from the input, got {type(arg).__name__} "
                f"({arg!r}); models with several outputs are not supported")
        return self.env[arg]

    # -- modules --------------------------------------------------------------------------
    def convert_module(self, n):
        torch = self.torch
        nn = torch.nn
        path = n.target
        mod = self.modules[path]
        tname = _type_name(mod)
        what = f"module '{path}' ({tname})"
        src = f"{path} ({type(mod).__name__})"

        def inp():
            if len(n.args) != 1 or n.kwargs:
                raise UnsupportedLayerError(f"unsupported call of module '{path}' ({tname}): expected one tensor argument")
            return self.tensor_input(n, n.args[0], f"module '{path}' ({tname})")

        def unsup(why):
            return UnsupportedLayerError(f"unsupported module '{path}' ({tname}): {why}")

        if self.from_constants(n, what):  # e.g. Swin v2's position-bias MLP on its coordinate table
            return
        if isinstance(mod, self.identity_modules):
            self.env[n] = inp()
            return
        if type(mod) in (nn.Linear,) or (isinstance(mod, nn.Linear) and type(mod).forward is nn.Linear.forward):
            x = inp()  # acts on the last axis
            bias = None if mod.bias is None else to_numpy(mod.bias)
            self.add(n, "dense", [x], {}, {"weight": to_numpy(mod.weight), "bias": bias}, name=path, source=src)
            return
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)) and type(mod).forward in (nn.Conv1d.forward, nn.Conv2d.forward):
            x = inp()
            d = 1 if isinstance(mod, nn.Conv1d) else 2
            if mod.padding_mode != "zeros":
                raise unsup(f"padding_mode='{mod.padding_mode}' (only 'zeros' is supported)")
            self.add_conv(n, x, d, mod.weight, mod.bias, mod.stride, mod.padding, mod.dilation, mod.groups,
                          name=path, source=src, unsup=unsup)
            return
        if isinstance(mod, (nn.ConvTranspose1d, nn.ConvTranspose2d)) and type(mod).forward in (
                nn.ConvTranspose1d.forward, nn.ConvTranspose2d.forward):
            x = inp()
            if mod.padding_mode != "zeros":
                raise unsup(f"padding_mode='{mod.padding_mode}' (only 'zeros' is supported)")
            self.add_conv_transpose(n, x, to_numpy(mod.weight), None if mod.bias is None else to_numpy(mod.bias),
                                    mod.stride, mod.padding, mod.output_padding, mod.dilation, mod.groups,
                                    name=path, source=src, unsup=unsup)
            return
        if isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d)):
            x = inp()
            d = 1 if isinstance(mod, nn.MaxPool1d) else 2
            if mod.return_indices:
                raise unsup("return_indices=True")
            self.add_maxpool(n, x, d, mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.ceil_mode,
                             name=path, source=src, unsup=unsup)
            return
        if isinstance(mod, (nn.AvgPool1d, nn.AvgPool2d)):
            x = inp()
            d = 1 if isinstance(mod, nn.AvgPool1d) else 2
            self.add_avgpool(n, x, d, mod.kernel_size, mod.stride, mod.padding, mod.ceil_mode, mod.count_include_pad,
                             getattr(mod, "divisor_override", None), name=path, source=src, unsup=unsup)
            return
        if isinstance(mod, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
            x = inp()
            d = 1 if isinstance(mod, nn.AdaptiveAvgPool1d) else 2
            self.add_adaptive(n, x, d, name=path, source=src, unsup=unsup)
            return
        norm_types = tuple(c for c in (nn.LayerNorm, getattr(nn, "RMSNorm", None)) if c is not None)
        if isinstance(mod, norm_types) and type(mod).forward in tuple(c.forward for c in norm_types):
            x = inp()
            rms = not isinstance(mod, nn.LayerNorm)
            eps = mod.eps if mod.eps is not None else float(torch.finfo(torch.float32).eps)
            w = None if mod.weight is None else to_numpy(mod.weight)
            b = None if getattr(mod, "bias", None) is None else to_numpy(mod.bias)
            self.add_layernorm(n, x, mod.normalized_shape, w, b, eps, rms, name=path, source=src, unsup=unsup)
            return
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)) and type(mod).forward is nn.modules.batchnorm._BatchNorm.forward:
            x = inp()
            if mod.running_mean is None or mod.running_var is None:
                raise unsup("track_running_stats=False (batch statistics at inference are not supported)")
            var = to_numpy(mod.running_var)
            mean = to_numpy(mod.running_mean)
            gamma = to_numpy(mod.weight) if mod.weight is not None else np.ones_like(mean)
            beta = to_numpy(mod.bias) if mod.bias is not None else np.zeros_like(mean)
            scale = gamma / np.sqrt(var + float(mod.eps))
            shift = beta - mean * scale
            self.add(n, "batchnorm", [x], {}, {"scale": scale, "shift": shift}, name=path, source=src)
            return
        if isinstance(mod, nn.Upsample):  # also UpsamplingNearest2d / UpsamplingBilinear2d
            x = inp()
            self.add_upsample(n, x, mod.mode, mod.align_corners, mod.scale_factor,
                              getattr(mod, "recompute_scale_factor", None), name=path, source=src, unsup=unsup)
            return
        if isinstance(mod, self.pad_modules):
            x = inp()
            self.add_pad(n, x, mod.padding, float(getattr(mod, "value", 0.0)), name=path, source=src, unsup=unsup)
            return
        if isinstance(mod, nn.Flatten):
            x = inp()
            if mod.start_dim == 0 or (mod.start_dim < 0 and mod.start_dim + len(self.shape(n.args[0])) == 0):
                raise unsup("start_dim=0 flattens the batch axis")
            self.add_reshape(n, x, what, name=path, source=src)
            return
        if isinstance(mod, nn.Unflatten):
            x = inp()
            self.add_reshape(n, x, what, name=path, source=src)
            return
        if isinstance(mod, nn.MultiheadAttention) and type(mod).forward is nn.MultiheadAttention.forward:
            self.add_multihead_attention(n, mod, path, src, unsup)
            return
        for cls, kind in self.act_modules.items():
            if type(mod) is cls:
                x = inp()
                attrs = {}
                if kind == "leaky_relu":
                    attrs["negative_slope"] = float(mod.negative_slope)
                elif kind == "elu":
                    attrs["alpha"] = float(mod.alpha)
                elif kind == "gelu":
                    kind = self.gelu_kind(mod.approximate, unsup)
                elif kind == "softplus" and (float(mod.beta) != 1.0 or float(mod.threshold) != 20.0):
                    raise unsup("only beta=1, threshold=20 is supported")
                elif kind == "softmax" and self.add_softmax(n, x, mod.dim, path, src, unsup):
                    return
                elif kind == "log_softmax":
                    self.check_softmax_dim(n, mod.dim, unsup)
                elif kind in ("relu6", "hardtanh"):  # nn.ReLU6 is a Hardtanh(0, 6)
                    kind, attrs = "hardtanh", {"min_val": float(mod.min_val), "max_val": float(mod.max_val)}
                self.add(n, "activation", [x], {"kind": kind, **attrs}, name=path, source=src)
                return
        raise UnsupportedLayerError(f"unsupported module '{path}' ({tname})")

    # -- functions ------------------------------------------------------------------------
    def from_constants(self, n, what) -> bool:
        """A call whose tensor operands are all constants (parameters, numbers) computes a
        constant: it becomes one (e.g. a layer-scale ``gamma.reshape(1, -1, 1, 1)``)."""
        ins = n.all_input_nodes
        if ins and n.name in self.consts and all(isinstance(self.env.get(a), Meta) for a in ins):
            self.env[n] = Meta(self.consts[n.name], f"{what} of constants at '{n.name}'")
            return True
        return False

    def convert_function(self, n, target, fname):
        torch = self.torch
        kind = self.fn_kind.get(target) if not isinstance(target, str) else None
        what = f"function {fname}"
        if "stochastic_depth" in fname or fname.endswith("drop_path"):
            # torchvision's StochasticDepth / timm's DropPath: the identity at inference
            if _arg(n, 3, "training", False) and "stochastic_depth" in fname:
                raise self.unsupported(n, what, "training=True (put the model in eval mode)")
            self.env[n] = self.tensor_input(n, n.args[0] if n.args else n.kwargs.get("input"), what)
            return
        if not isinstance(target, str) and self.from_constants(n, what):
            return
        swin = {"shifted_window_attention": self.add_shifted_window_attention,
                "_patch_merging_pad": self.add_patch_merging_pad}.get(getattr(target, "__name__", None))
        if swin is not None and getattr(target, "__module__", "").startswith("torchvision."):
            swin(n)
            return
        if target is getattr and len(n.args) >= 2:
            base = n.args[0]
            if n.args[1] in ("shape", "ndim", "dtype", "device") and isinstance(base, torch.fx.Node):
                self.env[n] = Meta(self.values.get(n.name), f"{base.name}.{n.args[1]}")
                return
            raise self.unsupported(n, f"attribute access .{n.args[1]}")
        if target is operator.getitem:
            base = n.args[0]
            if isinstance(base, torch.fx.Node) and isinstance(self.env.get(base), Meta):
                self.env[n] = Meta(self.values.get(n.name), f"{base.name}[...]")
                return
            if isinstance(base, torch.fx.Node) and isinstance(self.env.get(base), tuple):  # a part of a split
                self.env[n] = self.env[base][n.args[1]]
                return
            if isinstance(base, torch.fx.Node) and isinstance(self.env.get(base), str):
                self.convert_index(n, base, n.args[1], "indexing/slicing of a tensor (operator.getitem)")
                return
            if isinstance(base, torch.fx.Node) and isinstance(self.env.get(base), BatchMoved) and \
                    isinstance(n.args[1], int):
                self.env[n] = self.moved_parts(n, self.env[base])[n.args[1]]
                return
            raise self.unsupported(n, "indexing/slicing of a tensor (operator.getitem)")
        if kind is None and fname.startswith("operator.") and n.all_input_nodes and all(
            isinstance(self.env.get(a), Meta) for a in n.all_input_nodes
        ):
            # arithmetic on sizes, e.g. x.size(1) * x.size(2)
            self.env[n] = Meta(self.values.get(n.name), fname)
            return
        if kind is None:
            raise self.unsupported(n, what)
        self.convert_kind(n, kind, what, target)

    def convert_method(self, n):
        kind = self.method_kind.get(n.target)
        what = f"method Tensor.{n.target}"
        if self.from_constants(n, what):
            return
        if kind is None:
            raise self.unsupported(n, what)
        if kind == "meta":
            self.env[n] = Meta(self.values.get(n.name), f"{n.args[0]}.{n.target}()")
            return
        self.convert_kind(n, kind, what, None)

    def convert_kind(self, n, kind, what, target):
        torch = self.torch
        args = n.args

        def unsup(why):
            return self.unsupported(n, what, why)

        def x0():
            return self.tensor_input(n, args[0] if args else n.kwargs.get("input"), what)

        if kind == "identity":
            self.env[n] = x0()
            return
        if kind == "dropout":
            x = x0()
            training = _arg(n, 2, "train" if target is getattr(torch, "dropout", None) else "training", True)
            if training is True:
                warnings.warn(f"{what} at '{n.name}' is called with training=True; fastlrp treats it as the identity "
                              "(inference)", stacklevel=4)
            self.env[n] = x
            return
        if kind in ("add", "sub", "mul", "div", "neg"):
            if n.name not in self.tensor_nodes and all(isinstance(self.env.get(a), Meta) for a in n.all_input_nodes):
                self.env[n] = Meta(self.values.get(n.name), f"{what} of sizes")  # e.g. (h // p) * (w // p)
                return
            self.convert_arithmetic(n, kind, what, unsup)
            return
        if kind in ("matmul", "sdpa", "einsum", "expand"):
            self.convert_attention_kind(n, kind, what, unsup)
            return
        if kind == "cat":
            tensors = _arg(n, 0, "tensors")
            dim = _arg(n, 1, "dim", 0)
            if not isinstance(tensors, (list, tuple)):
                raise unsup("expected a list of tensors")
            ins = [self.operand(n, t, what)[0] for t in tensors]  # constants too: a class token
            rank = len(self.shape(n))
            dim = int(dim) + rank if int(dim) < 0 else int(dim)
            if dim == 0:
                raise unsup("concatenation along the batch axis")
            if len(ins) == 1:
                self.env[n] = ins[0]
                return
            self.add(n, "concat", ins, {"axis": dim - 1}, source=f"{n.name} ({what})")
            return
        if kind in ("reshape", "flatten"):
            x = x0()
            if kind == "flatten":
                start = int(_arg(n, 1, "start_dim", 0))
                if start == 0 or start + len(self.shape(args[0])) == 0:
                    raise unsup("start_dim=0 flattens the batch axis (flatten from axis 1)")
            self.add_reshape(n, x, what, source=f"{n.name} ({what})")
            return
        if kind in ("permute", "transpose"):
            x = x0()
            rank = len(self.shape(args[0]))
            if kind == "permute":
                dims = list(args[1:]) if len(args) > 1 else list(n.kwargs.get("dims", ()))
                if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
                    dims = list(dims[0])
                perm = [int(d) % rank for d in dims]
            else:
                d0, d1 = int(_arg(n, 1, "dim0")) % rank, int(_arg(n, 2, "dim1")) % rank
                perm = list(range(rank))
                perm[d0], perm[d1] = perm[d1], perm[d0]
            if perm[0] != 0:
                self.env[n] = BatchMoved(x, perm, f"{what} at '{n.name}'")  # until unbind(0) takes it apart
                return
            sp = tuple(p - 1 for p in perm[1:])
            if sp == tuple(range(rank - 1)):
                self.env[n] = x
                return
            self.add(n, "permute", [x], {"perm": sp}, source=f"{n.name} ({what})")
            return
        if kind in ("relu6", "hardtanh", "clamp"):
            x = x0()
            if kind == "relu6":
                lo, hi = 0.0, 6.0
            elif kind == "hardtanh":
                lo, hi = _arg(n, 1, "min_val", -1.0), _arg(n, 2, "max_val", 1.0)
            else:
                lo, hi = _arg(n, 1, "min", None), _arg(n, 2, "max", None)
            if any(isinstance(v, torch.fx.Node) for v in (lo, hi)):
                raise unsup("tensor bounds (only scalar bounds are supported)")
            lo = -np.inf if lo is None else float(lo)
            hi = np.inf if hi is None else float(hi)
            self.add(n, "activation", [x], {"kind": "hardtanh", "min_val": lo, "max_val": hi},
                     source=f"{n.name} ({what})")
            return
        if kind in ("relu", "leaky_relu", "elu", "tanh", "sigmoid", "gelu", "silu", "softplus",
                    "softmax", "log_softmax", "hardswish", "hardsigmoid"):
            x = x0()
            attrs = {}
            if kind == "leaky_relu":
                attrs["negative_slope"] = float(_arg(n, 1, "negative_slope", 0.01))
            elif kind == "elu":
                attrs["alpha"] = float(_arg(n, 1, "alpha", 1.0))
            elif kind == "gelu":
                kind = self.gelu_kind(_arg(n, 1, "approximate", "none"), unsup)
            elif kind == "softplus":
                if float(_arg(n, 1, "beta", 1.0)) != 1.0 or float(_arg(n, 2, "threshold", 20.0)) != 20.0:
                    raise unsup("only beta=1, threshold=20 is supported")
            elif kind == "softmax" and self.add_softmax(n, x, _arg(n, 1, "dim", None), None, f"{n.name} ({what})",
                                                        unsup):
                return
            elif kind == "log_softmax":
                self.check_softmax_dim(n, _arg(n, 1, "dim", None), unsup)
            self.add(n, "activation", [x], {"kind": kind, **attrs}, source=f"{n.name} ({what})")
            return
        if kind == "mean":
            x = x0()
            dim = _arg(n, 1, "dim", None)
            keepdim = bool(_arg(n, 2, "keepdim", False))
            if n.kwargs.get("dtype") is not None:
                raise unsup("dtype argument")
            full = self.shape(args[0])
            rank = len(full)
            if dim is None:
                raise unsup("mean over all axes (includes the batch axis)")
            dims = {int(d) % rank for d in (dim if isinstance(dim, (list, tuple)) else (dim,))}
            if 0 in dims:
                raise unsup(f"mean over axes {sorted(dims)} of a tensor of shape {full} (includes the batch axis)")
            src = f"{n.name} ({what})"
            if 1 in dims or rank not in (3, 4):
                self.add_mean_over_axes(n, x, full, dims, src)
                return
            d = rank - 2
            out_size = tuple(1 if (2 + i) in dims else full[2 + i] for i in range(d))
            pooled = self.add(n, "adaptive_avgpool", [x], {"dims": d, "output_size": out_size}, source=src)
            if not keepdim:
                self.add(n, "reshape", [pooled], {"shape": self.sample_shape(n)}, name=f"{n.name}_reshape", source=src)
            return
        if kind == "adaptive_avg_pool":
            x = x0()
            self.add_adaptive(n, x, self.fn_dims[target], source=f"{n.name} ({what})", unsup=unsup)
            return
        if kind == "max_pool":
            x = x0()
            if _arg(n, 6, "return_indices", False):
                raise unsup("return_indices=True")
            self.add_maxpool(n, x, self.fn_dims[target], _arg(n, 1, "kernel_size"), _arg(n, 2, "stride", None),
                             _arg(n, 3, "padding", 0), _arg(n, 4, "dilation", 1), _arg(n, 5, "ceil_mode", False),
                             source=f"{n.name} ({what})", unsup=unsup)
            return
        if kind == "avg_pool":
            x = x0()
            d = self.fn_dims[target]
            self.add_avgpool(n, x, d, _arg(n, 1, "kernel_size"), _arg(n, 2, "stride", None), _arg(n, 3, "padding", 0),
                             _arg(n, 4, "ceil_mode", False), _arg(n, 5, "count_include_pad", True),
                             _arg(n, 6, "divisor_override", None) if d == 2 else None,
                             source=f"{n.name} ({what})", unsup=unsup)
            return
        if kind in ("layer_norm", "rms_norm"):
            x = x0()
            w = self.const_value(n, _arg(n, 2, "weight", None), what, "weight")
            b = None if kind == "rms_norm" else self.const_value(n, _arg(n, 3, "bias", None), what, "bias")
            eps = _arg(n, 4 if kind == "layer_norm" else 3, "eps", 1e-5 if kind == "layer_norm" else None)
            eps = float(torch.finfo(torch.float32).eps) if eps is None else float(eps)
            self.add_layernorm(n, x, _arg(n, 1, "normalized_shape"), w, b, eps, kind == "rms_norm",
                               source=f"{n.name} ({what})", unsup=unsup)
            return
        if kind == "linear":
            x = x0()
            w = self.const_value(n, _arg(n, 1, "weight"), what, "weight")
            b = self.const_value(n, _arg(n, 2, "bias", None), what, "bias")
            if w is None or w.ndim != 2:
                raise unsup("the weight must be a 2-D parameter")
            self.add(n, "dense", [x], {}, {"weight": w, "bias": b}, source=f"{n.name} ({what})")
            return
        if kind == "interpolate":
            x = x0()
            if _arg(n, 6, "antialias", False):
                raise unsup("antialias=True")
            self.add_upsample(n, x, _arg(n, 3, "mode", "nearest"), _arg(n, 4, "align_corners", None),
                              _arg(n, 2, "scale_factor", None), _arg(n, 5, "recompute_scale_factor", None),
                              source=f"{n.name} ({what})", unsup=unsup)
            return
        if kind in ("chunk", "split", "unbind", "narrow", "select"):
            self.convert_split(n, kind, what, unsup)
            return
        if kind == "conv":
            x = x0()
            w = self.const_value(n, _arg(n, 1, "weight"), what, "weight")
            b = self.const_value(n, _arg(n, 2, "bias", None), what, "bias")
            d = w.ndim - 2
            self.add_conv(n, x, d, w, b, _arg(n, 3, "stride", 1), _arg(n, 4, "padding", 0), _arg(n, 5, "dilation", 1),
                          _arg(n, 6, "groups", 1), name=None, source=f"{n.name} ({what})", unsup=unsup)
            return
        if kind == "conv_transpose":
            x = x0()
            w = self.const_value(n, _arg(n, 1, "weight"), what, "weight")
            b = self.const_value(n, _arg(n, 2, "bias", None), what, "bias")
            self.add_conv_transpose(n, x, w, b, _arg(n, 3, "stride", 1), _arg(n, 4, "padding", 0),
                                    _arg(n, 5, "output_padding", 0), _arg(n, 7, "dilation", 1), _arg(n, 6, "groups", 1),
                                    source=f"{n.name} ({what})", unsup=unsup)
            return
        if kind == "batch_norm":
            x = x0()
            if _arg(n, 5, "training", False):
                raise unsup("training=True (batch statistics at inference are not supported)")
            mean = self.const_value(n, _arg(n, 1, "running_mean"), what, "running mean")
            var = self.const_value(n, _arg(n, 2, "running_var"), what, "running variance")
            if mean is None or var is None:
                raise unsup("no running statistics")
            gamma = self.const_value(n, _arg(n, 3, "weight", None), what, "weight")
            beta = self.const_value(n, _arg(n, 4, "bias", None), what, "bias")
            scale = (np.ones_like(mean) if gamma is None else gamma) / np.sqrt(var + float(_arg(n, 7, "eps", 1e-5)))
            shift = (np.zeros_like(mean) if beta is None else beta) - mean * scale
            self.add(n, "batchnorm", [x], {}, {"scale": scale, "shift": shift}, source=f"{n.name} ({what})")
            return
        if kind == "pad":
            x = x0()
            mode = _arg(n, 2, "mode", "constant")
            if mode != "constant":
                raise unsup(f"mode='{mode}' (only constant padding is supported)")
            value = _arg(n, 3, "value", None)
            self.add_pad(n, x, _arg(n, 1, "pad"), 0.0 if value is None else float(value),
                         source=f"{n.name} ({what})", unsup=unsup)
            return
        raise unsup("")  # pragma: no cover

    # -- attention ------------------------------------------------------------------------------
    def emit(self, op, inputs, attrs=None, params=None, name="", source=""):
        """An IR node that no fx node maps to (a step of a lowered layer); returns its name."""
        nm = self.unique(name)
        params = {k: np.asarray(v, dtype=np.float64) for k, v in (params or {}).items() if v is not None}
        self.nodes.append(Node(nm, op, list(inputs), dict(attrs or {}), params, (), source))
        return nm

    def scalar(self, arg):
        """A Python value argument, seen through a Meta (a default argument of forward, a size)."""
        v = self.env.get(arg) if isinstance(arg, self.torch.fx.Node) else None
        return v.value if isinstance(v, Meta) else arg

    @staticmethod
    def gelu_kind(approximate, unsup):
        if approximate not in ("none", "tanh"):
            raise unsup(f"approximate='{approximate}' (supported: 'none', 'tanh')")
        return "gelu" if approximate == "none" else "gelu_tanh"

    def add_softmax(self, n, x, dim, name, source, unsup) -> bool:
        """A softmax over an axis that is not the features of a (N, classes) output becomes a
        ``softmax`` node (attention weights); True when it did. The classifier's softmax stays an
        activation (stripped at the output)."""
        rank = len(self.shape(n))
        if dim is None or rank == 2:
            self.check_softmax_dim(n, dim, unsup)  # the classifier's softmax, else an error
            return False
        dim = int(dim) % rank
        if dim == 0:
            raise unsup("softmax over the batch axis")
        self.add(n, "softmax", [x], {"axis": dim - 1}, name=name, source=source)
        return True

    def add_mean_over_axes(self, n, x, full, dims, source):
        """A mean over any per-sample axes (e.g. over the tokens of (N, T, E), timm's
        ``global_pool="avg"``): the kept axes first, the averaged ones last, as (kept, averaged)
        rows of a 1-d average pool to one value, reshaped to the result."""
        per = [a - 1 for a in range(1, len(full))]
        red = [a - 1 for a in sorted(dims)]
        kept = [a for a in per if a not in red]
        h = x
        if kept + red != per:
            h = self.emit("permute", [h], {"perm": tuple(kept + red)}, name=f"{n.name}_axes", source=source)
        rows = int(np.prod([full[a + 1] for a in kept])) if kept else 1
        cols = int(np.prod([full[a + 1] for a in red]))
        h = self.emit("reshape", [h], {"shape": (rows, cols)}, name=f"{n.name}_rows", source=source)
        h = self.emit("adaptive_avgpool", [h], {"dims": 1, "output_size": (1,)}, name=f"{n.name}_pool", source=source)
        self.add(n, "reshape", [h], {"shape": self.sample_shape(n)}, source=source)

    def add_attention(self, n, q, k, v, scale, mask, prefix, source):
        """``softmax(q k^T * scale + mask) v`` over the last two axes as matmul / softmax nodes;
        ``scale`` a number or a constant array (one per head: Swin v2), ``mask`` a constant
        added to the scores (None: none). Returns the output's name."""
        scores = self.emit("matmul", [q, k], {"transpose_b": True}, name=f"{prefix}.scores", source=source)
        scale = np.asarray(scale, dtype=np.float64)
        what = f"scale {float(scale):.6g}" if scale.ndim == 0 else f"scales {scale.shape}"
        c = self.emit("const", [], params={"value": scale}, name=f"{prefix}.scale",
                      source=f"{source} {what} (constant)")
        scores = self.emit("mul", [scores, c], name=f"{prefix}.scaled", source=source)
        if mask is not None:
            m = self.emit("const", [], params={"value": mask}, name=f"{prefix}.mask", source=f"{source} mask (constant)")
            scores = self.emit("add", [scores, m], name=f"{prefix}.masked", source=source)
        weights = self.emit("softmax", [scores], {"axis": -1}, name=f"{prefix}.softmax", source=source)
        return self.emit("matmul", [weights, v], name=f"{prefix}.values", source=source)

    def attention_mask(self, n, mask, is_causal, L, S, rank, unsup, true_masks=False):
        """The per-sample additive mask of scores with ``rank`` axes (batch included) from
        ``attn_mask`` (a constant, float or boolean: True takes part, or with ``true_masks``,
        nn.MultiheadAttention's convention, True is masked out) and ``is_causal``, or None.
        Masked-out positions get -1e9 (the softmax gives them 0), so the constant stays finite."""
        out = None
        v = self.env.get(mask) if isinstance(mask, self.torch.fx.Node) else None
        if isinstance(v, Meta) and v.value is None:  # an optional mask argument left at None
            mask = None
        if mask is not None:
            t = v.value if isinstance(v, Meta) else self.consts.get(getattr(mask, "name", None))
            out = self.const_value(n, mask, "attention", "attention mask")
            if t is not None and t.dtype == self.torch.bool:
                out = np.where((out > 0) != true_masks, 0.0, -1e9)
        if is_causal:
            causal = np.where(np.tril(np.ones((L, S), bool)), 0.0, -1e9)
            out = causal if out is None else out + causal
        if out is None:
            return None
        out = np.maximum(np.nan_to_num(out, neginf=-1e9), -1e9)
        if out.ndim == rank:
            if out.shape[0] != 1:
                raise unsup(f"an attention mask of shape {out.shape} differs per sample (only a mask shared by the "
                            "batch is supported)")
            out = out[0]
        return out

    def add_multihead_attention(self, n, mod, path, src, unsup):
        """nn.MultiheadAttention (batch_first, eval): q/k/v projections as dense nodes, heads as
        reshape/permute, the attention core (:meth:`add_attention`), the output projection.
        The call's result is a tuple (output, None); only the output may be used."""
        names = ("query", "key", "value")
        args = [_arg(n, i, nm) for i, nm in enumerate(names)]
        if not mod.batch_first:
            raise unsup("batch_first=False (the batch axis must come first; build it with batch_first=True)")
        if mod.bias_k is not None or mod.add_zero_attn:
            raise unsup("add_bias_kv / add_zero_attn")
        if _arg(n, 3, "key_padding_mask", None) is not None:
            raise unsup("key_padding_mask")
        ins = [self.tensor_input(n, a, f"module '{path}'") for a in args]
        E, H = mod.embed_dim, mod.num_heads
        d = E // H
        if mod._qkv_same_embed_dim:
            ws = np.split(to_numpy(mod.in_proj_weight), 3)
        else:
            ws = [to_numpy(w) for w in (mod.q_proj_weight, mod.k_proj_weight, mod.v_proj_weight)]
        bs = [None] * 3 if mod.in_proj_bias is None else np.split(to_numpy(mod.in_proj_bias), 3)
        heads = []
        for x, a, w, b, tag in zip(ins, args, ws, bs, "qkv"):
            L = self.sample_shape(a)[0]
            h = self.emit("dense", [x], {}, {"weight": w, "bias": b}, name=f"{path}.{tag}_proj", source=src)
            h = self.emit("reshape", [h], {"shape": (L, H, d)}, name=f"{path}.{tag}_heads", source=src)
            heads.append(self.emit("permute", [h], {"perm": (1, 0, 2)}, name=f"{path}.{tag}_heads_first", source=src))
        L, S = self.sample_shape(args[0])[0], self.sample_shape(args[1])[0]
        mask = self.attention_mask(n, _arg(n, 5, "attn_mask", None), bool(self.scalar(_arg(n, 7, "is_causal", False))),
                                   L, S, 4,
                                   unsup, true_masks=True)
        o = self.add_attention(n, *heads, 1.0 / np.sqrt(d), mask, f"{path}.attention", src)
        o = self.emit("permute", [o], {"perm": (1, 0, 2)}, name=f"{path}.merge_heads", source=src)
        o = self.emit("reshape", [o], {"shape": (L, E)}, name=f"{path}.merged", source=src)
        ob = None if mod.out_proj.bias is None else to_numpy(mod.out_proj.bias)
        out = self.emit("dense", [o], {}, {"weight": to_numpy(mod.out_proj.weight), "bias": ob},
                        name=f"{path}.out_proj", source=src)
        self.env[n] = (out, None)

    def convert_attention_kind(self, n, kind, what, unsup):
        """matmul / bmm / ``@``, einsum of two operands, F.scaled_dot_product_attention, Tensor.expand."""
        torch = self.torch
        src = f"{n.name} ({what})"
        if kind == "expand":  # a parameter broadcast over the batch (a class token): stays a constant
            base = n.args[0]
            v = self.env.get(base)
            value = v.value if isinstance(v, Meta) else None
            if not isinstance(value, torch.Tensor) or value.ndim != len(self.shape(n)) or value.shape[0] != 1 or \
                    tuple(value.shape[1:]) != tuple(self.sample_shape(n)):
                raise unsup("only a parameter of batch size 1 expanded along the batch axis is supported (a class "
                            "token)")
            self.env[n] = Meta(value, f"{base.name} expanded over the batch")
            return
        if kind == "sdpa":
            a = [_arg(n, i, nm) for i, nm in enumerate(("query", "key", "value"))]
            if float(self.scalar(_arg(n, 4, "dropout_p", 0.0))) != 0.0:
                raise unsup("dropout_p > 0 (pass 0.0 at inference)")
            if self.scalar(_arg(n, 7, "enable_gqa", False)):
                raise unsup("enable_gqa=True")
            qs, ks = self.shape(a[0]), self.shape(a[1])
            if len(qs) < 3 or qs[:-2] != ks[:-2]:
                raise unsup(f"query {qs} and key {ks} need the same leading axes")
            scale = self.scalar(_arg(n, 6, "scale", None))
            scale = 1.0 / np.sqrt(qs[-1]) if scale is None else float(scale)
            mask = self.attention_mask(n, _arg(n, 3, "attn_mask", None), bool(self.scalar(_arg(n, 5, "is_causal", False))),
                                       qs[-2], ks[-2], len(qs), unsup)
            q, k, v = (self.tensor_input(n, t, what) for t in a)
            self.env[n] = self.add_attention(n, q, k, v, scale, mask, n.name, src)
            return
        if kind == "einsum":
            self.convert_einsum(n, what, unsup)
            return
        x, y = _arg(n, 0, "input"), _arg(n, 1, "other", _arg(n, 1, "mat2"))
        (a, ca), (b, cb) = self.operand(n, x, what), self.operand(n, y, what)
        if ca or cb:
            raise unsup("a product with a constant matrix (use nn.Linear / F.linear for x @ W)")
        if len(self.shape(x)) < 3 or len(self.shape(y)) < 3:
            raise unsup(f"operands of shapes {self.shape(x)} and {self.shape(y)}; both need a batch axis and two "
                        "matrix axes")
        self.add(n, "matmul", [a, b], {"transpose_b": False}, source=src)

    def convert_einsum(self, n, what, unsup):
        """An einsum of two tensors that is a batched matmul: operands permuted to (batch, free,
        contracted) / (batch, contracted, free), one matmul, the result permuted to the output's order."""
        eq = str(n.args[0]).replace(" ", "")
        ops_ = tuple(n.args[1]) if isinstance(n.args[1], (list, tuple)) else n.args[1:]
        if "->" not in eq or "." in eq or len(ops_) != 2:
            raise unsup(f"einsum '{eq}' (only an explicit 'ab,bc->ac'-style product of two tensors is supported)")
        ins, out = eq.split("->")
        sa, sb = ins.split(",")
        if len(set(sa)) != len(sa) or len(set(sb)) != len(sb) or any(c not in sa + sb for c in out):
            raise unsup(f"einsum '{eq}' (repeated or unknown indices)")
        batch = [c for c in out if c in sa and c in sb]
        contr = [c for c in sa if c in sb and c not in out]
        fa = [c for c in sa if c in out and c not in sb]
        fb = [c for c in sb if c in out and c not in sa]
        if set(sa) != set(batch + contr + fa) or set(sb) != set(batch + contr + fb) or not batch or \
                batch[0] != sa[0] or batch[0] != sb[0] or batch[0] != out[0]:
            raise unsup(f"einsum '{eq}' (needs the batch index first everywhere and no summed-out free index)")
        size = {}
        for sub, t in ((sa, ops_[0]), (sb, ops_[1])):
            for c, s in zip(sub, self.shape(t)):
                size[c] = s
        src = f"{n.name} ({what})"

        def arrange(sub, t, order, tag):
            x = self.tensor_input(n, t, what)
            perm = [sub.index(c) for c in order]
            if perm != list(range(len(perm))):
                x = self.emit("permute", [x], {"perm": tuple(p - 1 for p in perm[1:])}, name=f"{n.name}_{tag}",
                              source=src)
            return x

        groups = lambda cs: int(np.prod([size[c] for c in cs]))  # noqa: E731
        lead = tuple(size[c] for c in batch[1:])
        a = arrange(sa, ops_[0], batch + fa + contr, "a")
        a = self.emit("reshape", [a], {"shape": lead + (groups(fa), groups(contr))}, name=f"{n.name}_a2", source=src)
        b = arrange(sb, ops_[1], batch + fb + contr, "b")
        b = self.emit("reshape", [b], {"shape": lead + (groups(fb), groups(contr))}, name=f"{n.name}_b2", source=src)
        z = self.emit("matmul", [a, b], {"transpose_b": True}, name=n.name, source=src)
        order = batch + fa + fb
        z = self.emit("reshape", [z], {"shape": tuple(size[c] for c in order[1:])}, name=f"{n.name}_out",
                      source=src)
        perm = [order.index(c) for c in out]
        if perm != list(range(len(perm))):
            z = self.emit("permute", [z], {"perm": tuple(p - 1 for p in perm[1:])}, name=f"{n.name}_order", source=src)
        self.env[n] = z

    # -- Swin (torchvision's fx-wrapped functions) ---------------------------------------------
    def emit_slice(self, x, axis, start, stop, step=1, name="", source=""):
        return self.emit("slice", [x], {"axis": axis, "start": start, "stop": stop, "step": step}, name=name,
                         source=source)

    def emit_roll(self, x, shift, axis, length, name, source):
        """``torch.roll`` along one per-sample axis: a concat of the two slices."""
        k = (-int(shift)) % length
        if k == 0:
            return x
        parts = [self.emit_slice(x, axis, k, length, name=f"{name}_tail", source=source),
                 self.emit_slice(x, axis, 0, k, name=f"{name}_head", source=source)]
        return self.emit("concat", parts, {"axis": axis}, name=name, source=source)

    def add_patch_merging_pad(self, n):
        """torchvision's ``_patch_merging_pad``: pad H, W to even sizes, the four strided
        quarter grids concatenated along the channels."""
        src = f"{n.name} (swin patch merging)"
        x = self.tensor_input(n, n.args[0], "swin patch merging")
        H, W, C = self.sample_shape(n.args[0])
        if H % 2 or W % 2:
            x = self.emit("pad", [x], {"padding": ((0, H % 2), (0, W % 2), (0, 0))}, name=f"{n.name}_pad", source=src)
        parts = []
        for i, (a, b) in enumerate(((0, 0), (1, 0), (0, 1), (1, 1))):
            p = self.emit_slice(x, 0, a, None, 2, name=f"{n.name}_{i}h", source=src)
            parts.append(self.emit_slice(p, 1, b, None, 2, name=f"{n.name}_{i}w", source=src))
        self.add(n, "concat", parts, {"axis": 2}, source=src)

    def add_shifted_window_attention(self, n):
        """torchvision's ``shifted_window_attention`` (Swin v1 and v2): pad, cyclic shift (concat
        of slices), window partition (reshape/permute per sample), dense qkv, attention with the
        relative position bias and the shifted windows' mask as one added constant, dense
        projection, and everything undone in reverse. Swin v2 (``logit_scale`` given): cosine
        attention, q and k each L2-normalised over their features (an RMSNorm with weight
        1/sqrt(d), eps 1e-24/d: x / sqrt(|x|^2 + 1e-24) where torch takes x / max(|x|, 1e-12)),
        the scores scaled per head by exp(min(logit_scale, log 100)), no bias on k."""
        what = "swin shifted_window_attention"
        src = f"{n.name} ({what})"
        names = ("input", "qkv_weight", "proj_weight", "relative_position_bias", "window_size", "num_heads",
                 "shift_size", "attention_dropout", "dropout", "qkv_bias", "proj_bias", "logit_scale", "training")
        a = {k: _arg(n, i, k) for i, k in enumerate(names)}
        v2 = self.scalar(a["logit_scale"]) is not None
        x = self.tensor_input(n, a["input"], what)
        H, W, C = self.sample_shape(a["input"])
        ws = [int(v) for v in self.scalar(a["window_size"])]
        heads = int(self.scalar(a["num_heads"]))
        shift = [int(v) for v in self.scalar(a["shift_size"])]
        bias = self.const_value(n, a["relative_position_bias"], what, "relative position bias")
        pb, pr = (ws[0] - H % ws[0]) % ws[0], (ws[1] - W % ws[1]) % ws[1]
        pH, pW = H + pb, W + pr
        if pb or pr:
            x = self.emit("pad", [x], {"padding": ((0, pb), (0, pr), (0, 0))}, name=f"{n.name}_pad", source=src)
        shift = [0 if ws[i] >= (pH, pW)[i] else shift[i] for i in (0, 1)]
        for i in (0, 1):
            x = self.emit_roll(x, -shift[i], i, (pH, pW)[i], f"{n.name}_shift{i}", src)
        nh, nw, N = pH // ws[0], pW // ws[1], ws[0] * ws[1]
        x = self.emit("reshape", [x], {"shape": (nh, ws[0], nw, ws[1], C)}, name=f"{n.name}_grid", source=src)
        x = self.emit("permute", [x], {"perm": (0, 2, 1, 3, 4)}, name=f"{n.name}_windows_first", source=src)
        x = self.emit("reshape", [x], {"shape": (nh * nw, N, C)}, name=f"{n.name}_windows", source=src)
        qkv_bias = self.const_value(n, a["qkv_bias"], what, "qkv bias")
        if v2 and qkv_bias is not None:  # (v2 zeroes the bias of k)
            qkv_bias = np.array(qkv_bias, dtype=np.float64)
            qkv_bias[C:2 * C] = 0.0
        qkv = self.emit("dense", [x], {}, {"weight": self.const_value(n, a["qkv_weight"], what, "qkv weight"),
                                          "bias": qkv_bias}, name=f"{n.name}.qkv", source=src)
        qkv = self.emit("reshape", [qkv], {"shape": (nh * nw, N, 3, heads, C // heads)}, name=f"{n.name}_qkv_heads",
                        source=src)
        qkv_parts = []
        for i, t in enumerate("qkv"):
            p = self.emit_slice(qkv, 2, i, i + 1, name=f"{n.name}_{t}", source=src)
            p = self.emit("reshape", [p], {"shape": (nh * nw, N, heads, C // heads)}, name=f"{n.name}_{t}_squeeze",
                          source=src)
            qkv_parts.append(self.emit("permute", [p], {"perm": (0, 2, 1, 3)}, name=f"{n.name}_{t}_heads",
                                       source=src))
        mask = bias.reshape(1, heads, N, N)
        if sum(shift):
            region = np.zeros((pH, pW))
            count = 0
            for h in ((0, -ws[0]), (-ws[0], -shift[0]), (-shift[0], None)):
                for w in ((0, -ws[1]), (-ws[1], -shift[1]), (-shift[1], None)):
                    region[h[0]:h[1], w[0]:w[1]] = count
                    count += 1
            region = region.reshape(nh, ws[0], nw, ws[1]).transpose(0, 2, 1, 3).reshape(nh * nw, N)
            mask = mask + np.where(region[:, None, :] != region[:, :, None], -100.0, 0.0)[:, None]
        scale = (C // heads) ** -0.5
        if v2:
            d = C // heads
            for i in (0, 1):
                qkv_parts[i] = self.emit("layernorm", [qkv_parts[i]], {"axes": (-1,), "eps": 1e-24 / d, "rms": True},
                                         {"weight": np.full((1, 1, 1, d), d ** -0.5), "bias": None},
                                         name=f"{n.name}_{'qk'[i]}_normalized", source=src)
            ls = self.const_value(n, a["logit_scale"], what, "logit scale")
            scale = np.exp(np.minimum(ls, np.log(100.0))).reshape(heads, 1, 1)
        o = self.add_attention(n, *qkv_parts, scale, mask, f"{n.name}.attention", src)
        o = self.emit("permute", [o], {"perm": (0, 2, 1, 3)}, name=f"{n.name}_merge_heads", source=src)
        o = self.emit("reshape", [o], {"shape": (nh * nw, N, C)}, name=f"{n.name}_merged", source=src)
        o = self.emit("dense", [o], {}, {"weight": self.const_value(n, a["proj_weight"], what, "projection weight"),
                                        "bias": self.const_value(n, a["proj_bias"], what, "projection bias")},
                      name=f"{n.name}.proj", source=src)
        o = self.emit("reshape", [o], {"shape": (nh, nw, ws[0], ws[1], C)}, name=f"{n.name}_unwindow", source=src)
        o = self.emit("permute", [o], {"perm": (0, 2, 1, 3, 4)}, name=f"{n.name}_grid_back", source=src)
        o = self.emit("reshape", [o], {"shape": (pH, pW, C)}, name=f"{n.name}_image", source=src)
        for i in (0, 1):
            o = self.emit_roll(o, shift[i], i, (pH, pW)[i], f"{n.name}_unshift{i}", src)
        if pb:
            o = self.emit_slice(o, 0, 0, H, name=f"{n.name}_crop_h", source=src)
        if pr:
            o = self.emit_slice(o, 1, 0, W, name=f"{n.name}_crop_w", source=src)
        self.env[n] = o

    # -- resampling ---------------------------------------------------------------------------
    def add_upsample(self, n, x, mode, align_corners, scale_factor, recompute, name=None, source="", unsup=None):
        """nn.Upsample / F.interpolate in nearest, linear or bilinear mode (the output size as traced)."""
        out = tuple(self.sample_shape(n))
        d = len(out) - 1
        modes = {"nearest": "nearest", "linear": "linear", "bilinear": "linear"}
        if mode not in modes or (mode == "linear" and d != 1) or (mode == "bilinear" and d != 2) or d not in (1, 2):
            raise unsup(f"mode='{mode}' on a {d}-d input (supported: nearest, linear (1-d), bilinear (2-d))")
        scale = None
        if scale_factor is not None and not recompute:  # PyTorch maps coordinates by 1 / scale_factor then
            sf = scale_factor if isinstance(scale_factor, (tuple, list)) else (scale_factor,) * d
            scale = tuple(1.0 / float(v) for v in sf)
        self.add(n, "upsample", [x], {"dims": d, "size": out[1:], "mode": modes[mode],
                                      "align_corners": bool(align_corners), "scale": scale}, name=name, source=source)

    # -- slicing and splitting ----------------------------------------------------------------
    def add_slice(self, n, x, axis, start, stop, step=1, squeeze=False, suffix=""):
        """One ``slice`` node (per-sample ``axis``; ``squeeze`` drops the axis, as an int index)."""
        torch = self.torch
        for v in (start, stop, step):
            if isinstance(v, torch.fx.Node):
                raise self.unsupported(n, f"slicing at '{n.name}'", "bounds computed at run time")
        name = self.unique(f"{n.name}{suffix}")
        shape = self.shapes_of(x)
        self.nodes.append(Node(name, "slice", [x], {"axis": axis, "start": start, "stop": stop, "step": step or 1},
                               {}, (), f"{n.name} (slice)"))
        if not squeeze:
            return name
        out = tuple(s for i, s in enumerate(shape) if i != axis)
        sq = self.unique(f"{name}_squeeze")
        self.nodes.append(Node(sq, "reshape", [name], {"shape": out}, {}, (), f"{n.name} (index)"))
        return sq

    def moved_parts(self, n, moved):
        """The parts ``P[i]`` of a permute ``P`` that moved the batch axis (:class:`BatchMoved`):
        slices of the permuted tensor's axis ``perm[0]``, each permuted with the batch axis first."""
        a = moved.perm[0]
        rest = [p if p < a else p - 1 for p in moved.perm[1:]]
        if rest[0] != 0:
            raise self.unsupported(n, f"taking apart {moved.origin}", "its parts do not have the batch axis first")
        parts = []
        for i in range(self.shapes_of(moved.x)[a - 1]):
            part = self.add_slice(n, moved.x, a - 1, i, i + 1, squeeze=True, suffix=f"_{i}")
            perm = tuple(p - 1 for p in rest[1:])
            if perm != tuple(range(len(perm))):
                part = self.emit("permute", [part], {"perm": perm}, name=f"{n.name}_{i}_permute",
                                 source=f"{n.name} (part {i} of {moved.origin})")
            parts.append(part)
        return parts

    def shapes_of(self, name):
        """Per-sample shape of an IR node made so far (from the traced fx shapes)."""
        for fx, v in self.env.items():
            if v == name:
                return tuple(self.sample_shape(fx))
        node = next(m for m in self.nodes if m.name == name)
        return tuple(Graph(self.nodes[: self.nodes.index(node) + 1], output=name)[name].shape)

    def convert_index(self, n, base, idx, what):
        """``x[:, a:b, i]``: slices of per-sample axes (an int index drops its axis)."""
        idx = idx if isinstance(idx, tuple) else (idx,)
        if not idx or idx[0] != slice(None):
            raise self.unsupported(n, what, "only the per-sample axes can be indexed (x[:, ...])")
        if any(i is Ellipsis or i is None for i in idx):
            raise self.unsupported(n, what, "Ellipsis / None (new axis) in the index")
        x = self.env[base]
        axis = 0  # per-sample axis of the current result
        for i in idx[1:]:
            if isinstance(i, slice):
                if i != slice(None):
                    x = self.add_slice(n, x, axis, i.start, i.stop, i.step, suffix=f"_{axis}")
                axis += 1
            elif isinstance(i, int):
                length = self.shapes_of(x)[axis]
                j = i + length if i < 0 else i
                x = self.add_slice(n, x, axis, j, j + 1, 1, squeeze=True, suffix=f"_{axis}")
            else:
                raise self.unsupported(n, what, f"index {i!r} (only slices and integers are supported)")
        self.env[n] = x

    def convert_split(self, n, kind, what, unsup):
        """chunk / split / unbind (a tuple of parts, read by getitem), narrow, select."""
        moved = self.env.get(n.args[0] if n.args else n.kwargs.get("input"))
        if isinstance(moved, BatchMoved) and kind in ("unbind", "select") and \
                int(_arg(n, 1, "dim", 0)) == 0:
            parts = self.moved_parts(n, moved)
            self.env[n] = tuple(parts) if kind == "unbind" else parts[int(_arg(n, 2, "index"))]
            return
        x = self.tensor_input(n, n.args[0] if n.args else n.kwargs.get("input"), what)
        rank = len(self.shape(n.args[0] if n.args else n.kwargs.get("input")))
        dim_pos = {"chunk": 2, "split": 2, "unbind": 1, "narrow": 1, "select": 1}[kind]
        dim = int(_arg(n, dim_pos, "dim", 0))
        dim = dim + rank if dim < 0 else dim
        if dim == 0:
            raise unsup("it splits the batch axis")
        axis = dim - 1
        length = self.sample_shape(n.args[0] if n.args else n.kwargs.get("input"))[axis]
        if kind == "narrow":
            start = int(_arg(n, 2, "start"))
            start = start + length if start < 0 else start
            self.env[n] = self.add_slice(n, x, axis, start, start + int(_arg(n, 3, "length")))
            return
        if kind == "select":
            i = int(_arg(n, 2, "index"))
            i = i + length if i < 0 else i
            self.env[n] = self.add_slice(n, x, axis, i, i + 1, squeeze=True)
            return
        if kind == "chunk":
            size = -(-length // int(_arg(n, 1, "chunks")))
            sizes = [min(size, length - s) for s in range(0, length, size)]
        elif kind == "split":
            arg = _arg(n, 1, "split_size_or_sections", None)
            arg = _arg(n, 1, "split_size", None) if arg is None else arg
            if isinstance(arg, (list, tuple)):
                sizes = [int(v) for v in arg]
            else:
                sizes = [min(int(arg), length - s) for s in range(0, length, int(arg))]
        else:  # unbind
            sizes = [1] * length
        parts, start = [], 0
        for k, size in enumerate(sizes):
            parts.append(self.add_slice(n, x, axis, start, start + size, squeeze=kind == "unbind", suffix=f"_{k}"))
            start += size
        self.env[n] = tuple(parts)

    # -- constants and arithmetic -------------------------------------------------------------
    def const_value(self, fxnode, arg, what, role):
        """A parameter argument (a module attribute read with get_attr, or a tensor computed
        from parameters only) as float64 NumPy; None for None; an error for anything else."""
        torch = self.torch
        if arg is None:
            return None
        if isinstance(arg, torch.fx.Node):
            v = self.env.get(arg)
            value = v.value if isinstance(v, Meta) else None
            if value is None and not isinstance(v, str):
                value = self.consts.get(arg.name)
            if isinstance(value, torch.Tensor):
                return np.asarray(to_numpy(value), dtype=np.float64)
        raise self.unsupported(fxnode, what, f"its {role} ({arg!r}) is not a parameter of the model")

    def add_layernorm(self, n, x, normalized_shape, w, b, eps, rms, name=None, source="", unsup=None):
        """LayerNorm / RMSNorm over the last ``len(normalized_shape)`` axes."""
        shape = tuple(self.sample_shape(n))
        k = len(tuple(normalized_shape)) if isinstance(normalized_shape, (tuple, list)) else 1
        if k > len(shape) or tuple(shape[len(shape) - k:]) != tuple(int(s) for s in (
                normalized_shape if isinstance(normalized_shape, (tuple, list)) else (normalized_shape,))):
            raise unsup(f"normalized_shape {normalized_shape} is not the trailing part of the per-sample shape {shape}")
        lead = (1,) * (len(shape) - k)
        params = {k2: None if v is None else np.asarray(v, np.float64).reshape(lead + shape[len(shape) - k:])
                  for k2, v in (("weight", w), ("bias", b))}
        self.add(n, "layernorm", [x], {"axes": tuple(range(len(shape) - k, len(shape))), "eps": float(eps),
                                       "rms": bool(rms)}, params, name=name, source=source)

    def operand(self, fxnode, arg, what):
        """``(IR node name, is_constant)`` of an operand of an elementwise op: a tensor computed
        from the input, or a ``const`` node for a number, a parameter or a tensor computed from
        parameters only (per-sample: a leading axis of 1 is the batch axis)."""
        torch = self.torch
        if isinstance(arg, torch.fx.Node):
            v = self.env.get(arg)
            if isinstance(v, str):
                return v, False
            value, origin = (v.value, v.origin) if isinstance(v, Meta) else (None, arg.name)
            if value is None:
                value = self.consts.get(arg.name)
        elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
            value, origin = float(arg), repr(arg)
        else:
            value, origin = arg, repr(arg)
        if isinstance(value, torch.Tensor):
            value = to_numpy(value)
        if not isinstance(value, (float, np.ndarray)):
            raise self.unsupported(fxnode, what, f"operand {origin} is neither a tensor nor a number")
        value = np.asarray(value, dtype=np.float64)
        rank = len(self.shape(fxnode))
        if value.ndim == rank:
            if value.shape[0] != 1:
                raise self.unsupported(fxnode, what, f"constant operand {origin} of shape {value.shape} has a batch "
                                       "axis")
            value = value[0]
        name = self.unique(f"{fxnode.name}_const")
        self.nodes.append(Node(name, "const", [], {}, {"value": value}, tuple(value.shape), f"{origin} (constant)"))
        return name, True

    def negated(self, fxnode, name, is_const):
        """``-x`` of an operand: a negated constant, or ``x * -1``."""
        if is_const:
            node = next(m for m in self.nodes if m.name == name)
            node.params["value"] = -node.params["value"]
            return name
        minus = self.unique(f"{fxnode.name}_minus_one")
        self.nodes.append(Node(minus, "const", [], {}, {"value": np.array(-1.0)}, (), "-1 (constant)"))
        neg = self.unique(f"{fxnode.name}_neg")
        self.nodes.append(Node(neg, "mul", [name, minus], {}, {}, (), f"{fxnode.name} (negation)"))
        return neg

    def convert_arithmetic(self, n, kind, what, unsup):
        """``+ - * /`` and negation of tensors and constants: ``add`` / ``mul`` nodes with
        ``const`` operands (a subtraction adds the negation, a division by a constant
        multiplies by its inverse)."""
        args = n.args
        src = f"{n.name} ({what})"
        if n.kwargs.get("out") is not None:
            raise unsup("out= argument")
        if kind == "neg":
            x, c = self.operand(n, args[0] if args else n.kwargs.get("input"), what)
            if c:
                raise unsup("negation of a constant")
            minus = self.unique(f"{n.name}_minus_one")
            self.nodes.append(Node(minus, "const", [], {}, {"value": np.array(-1.0)}, (), "-1 (constant)"))
            self.add(n, "mul", [x, minus], source=src)
            return
        if len(args) < 2 and "other" not in n.kwargs:
            raise unsup("expected two operands")
        first = args[0] if args else n.kwargs.get("input")
        second = args[1] if len(args) > 1 else n.kwargs.get("other")
        alpha = _arg(n, 2, "alpha", 1)
        if kind in ("add", "sub") and alpha != 1:
            raise unsup(f"alpha={alpha} (only a plain x + y / x - y is supported)")
        if kind == "div" and _arg(n, 2, "rounding_mode", None) is not None:
            raise unsup("rounding_mode (only true division is supported)")
        (a, ca), (b, cb) = self.operand(n, first, what), self.operand(n, second, what)
        if ca and cb:  # pragma: no cover - constants are folded by torch's tracer or are Meta
            raise unsup("both operands are constants")
        if kind == "sub":
            b = self.negated(n, b, cb)
        if kind == "div":
            if not cb:
                raise unsup("division by a tensor computed from the input (only division by a constant is supported)")
            node = next(m for m in self.nodes if m.name == b)
            if np.any(node.params["value"] == 0):
                raise unsup("division by a constant with zeros")
            node.params["value"] = 1.0 / node.params["value"]
        self.add(n, "add" if kind in ("add", "sub") else "mul", [a, b], source=src)

    # -- layer builders ---------------------------------------------------------------------
    def add_pad(self, n, x, flat, value, name=None, source="", unsup=None):
        """``F.pad``-ordered amounts (last axis first, (before, after) per axis; negative
        crops) as one pair per per-sample axis."""
        flat = [int(v) for v in flat]
        rank = len(self.sample_shape(n.args[0] if n.args else n.kwargs["input"]))
        if len(flat) % 2 or len(flat) // 2 > rank:
            raise unsup(f"padding {tuple(flat)} does not fit a tensor with {rank} per-sample axes "
                        "(padding the batch axis is not supported)")
        pairs = [(0, 0)] * rank
        for k in range(len(flat) // 2):
            pairs[rank - 1 - k] = (flat[2 * k], flat[2 * k + 1])
        self.add(n, "pad", [x], {"padding": tuple(pairs), "value": value}, name=name, source=source)

    def check_softmax_dim(self, n, dim, unsup):
        rank = len(self.shape(n))
        if dim is None:
            dim = 0 if rank in (0, 1, 3) else 1  # torch's legacy implicit choice
        if rank != 2 or int(dim) % rank != 1:
            raise unsup(f"softmax over axis {dim} of a tensor of shape {self.shape(n)}; only a softmax over the "
                        "features of a (N, classes) output is supported")

    def add_conv(self, n, x, d, weight, bias, stride, padding, dilation, groups, name, source, unsup):
        stride, dilation = _tup(stride, d), _tup(dilation, d)
        k = tuple(weight.shape[2:])
        if isinstance(padding, str):
            if padding == "valid":
                pads = ((0, 0),) * d
            elif padding == "same":
                pads = []
                for i in range(d):
                    total = dilation[i] * (k[i] - 1)
                    pads.append((total // 2, total - total // 2))
                pads = tuple(pads)
            else:
                raise unsup(f"padding='{padding}'")
        else:
            pads = tuple((p, p) for p in _tup(padding, d))
        attrs = {"dims": d, "stride": stride, "padding": pads, "dilation": dilation, "groups": int(groups)}
        self.add(n, "conv", [x], attrs, {"weight": to_numpy(weight), "bias": None if bias is None else to_numpy(bias)},
                 name=name, source=source)

    def add_conv_transpose(self, n, x, weight, bias, stride, padding, output_padding, dilation, groups, name=None,
                           source="", unsup=None):
        """A transposed convolution: the pairs (p, p + output_padding) of the conv it transposes."""
        d = weight.ndim - 2
        if d not in (1, 2):
            raise unsup(f"{d}-D transposed convolution (only 1-D and 2-D are supported)")
        if isinstance(padding, str):
            raise unsup(f"padding='{padding}'")
        pads = tuple((p, p + o) for p, o in zip(_tup(padding, d), _tup(output_padding, d)))
        attrs = {"dims": d, "stride": _tup(stride, d), "padding": pads, "dilation": _tup(dilation, d),
                 "groups": int(groups), "output_size": tuple(self.sample_shape(n)[1:])}
        self.add(n, "conv_transpose", [x], attrs, {"weight": weight, "bias": bias}, name=name, source=source)

    def add_maxpool(self, n, x, d, kernel, stride, padding, dilation, ceil_mode, name=None, source="", unsup=None):
        kernel = _tup(kernel, d)
        stride = kernel if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0) else _tup(stride, d)
        attrs = {"dims": d, "kernel": kernel, "stride": stride, "padding": tuple((p, p) for p in _tup(padding, d)),
                 "dilation": _tup(dilation, d), "ceil_mode": bool(ceil_mode)}
        self.add(n, "maxpool", [x], attrs, name=name, source=source)

    def add_avgpool(self, n, x, d, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override,
                    name=None, source="", unsup=None):
        kernel = _tup(kernel, d)
        stride = kernel if stride is None or (isinstance(stride, (list, tuple)) and len(stride) == 0) else _tup(stride, d)
        attrs = {"dims": d, "kernel": kernel, "stride": stride, "padding": tuple((p, p) for p in _tup(padding, d)),
                 "ceil_mode": bool(ceil_mode), "count_include_pad": bool(count_include_pad),
                 "divisor_override": None if divisor_override is None else int(divisor_override)}
        self.add(n, "avgpool", [x], attrs, name=name, source=source)

    def add_adaptive(self, n, x, d, name=None, source="", unsup=None):
        ins = self.sample_shape(n.args[0])
        if len(ins) != d + 1:
            raise unsup(f"input of per-sample shape {ins}; expected {d + 1} axes (channels first)")
        out = self.sample_shape(n)
        self.add(n, "adaptive_avgpool", [x], {"dims": d, "output_size": tuple(out[1:])}, name=name, source=source)

    def add_reshape(self, n, x, what, name=None, source=""):
        self.check_batch(n, what)
        src_shape = self.sample_shape(n.args[0])
        out = self.sample_shape(n)
        if out == src_shape:
            self.env[n] = x
            return
        self.add(n, "reshape", [x], {"shape": out}, name=name, source=source)


def lower(converter: "Converter", meta: dict, keep_output_activation: bool = False) -> Graph:
    """Translate the converter's fx graph, build the :class:`Graph` and run the IR passes
    (:func:`fastlrp.passes.optimize`) once."""
    out = converter.run()
    try:
        graph = Graph(converter.nodes, output=out, meta=meta)
    except GraphError as e:
        raise GraphError(f"import of {meta.get('name')} produced an invalid graph: {e}") from e
    try:
        return passes.optimize(graph, keep_output_activation=keep_output_activation)
    except GraphError as e:  # a graph the engine cannot explain, e.g. a softmax inside the model
        raise UnsupportedLayerError(str(e)) from e


def propagate(torch, gm, x):
    """Run ``x`` through the traced module; record each node's output shape (tensors) or value.

    Returns ``(values, tensor_nodes, consts)``: ``consts`` holds the tensors that do not
    depend on the input (parameters read with get_attr, and what is computed from them,
    such as a transposed weight in an exported graph).
    """
    values: dict = {}
    tensor_nodes: set = set()
    consts: dict = {}
    dependent: set = set()

    class _Rec(torch.fx.Interpreter):
        def run_node(self, n):
            r = super().run_node(n)
            if n.op == "placeholder" or any(a.name in dependent for a in n.all_input_nodes):
                dependent.add(n.name)
            if isinstance(r, torch.Tensor):
                values[n.name] = tuple(int(s) for s in r.shape)
                tensor_nodes.add(n.name)
                if n.name not in dependent:
                    consts[n.name] = r.detach()
            elif isinstance(r, (int, float, bool, str, type(None))) or (
                isinstance(r, (tuple, list)) and all(isinstance(v, (int, float)) for v in r)
            ):
                values[n.name] = r if not isinstance(r, list) else tuple(r)
            elif isinstance(r, torch.Size):
                values[n.name] = tuple(r)
            return r

    try:
        with torch.no_grad():
            _Rec(gm).run(x)
    except Exception as e:  # noqa: BLE001
        raise UnsupportedLayerError(
            f"running the example input of shape {tuple(x.shape)} through the traced model failed: "
            f"{type(e).__name__}: {e}"
        ) from e
    return values, tensor_nodes, consts

