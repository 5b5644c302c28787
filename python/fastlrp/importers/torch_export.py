"""Import ``torch.export`` programs and TorchScript modules (ATen-level graphs).

``from_torch(exported_program)`` converts the program's graph, whose nodes call
ATen operators (``aten.conv2d.default``, ``aten.linear.default``,
``aten._native_batch_norm_legit_no_training.default`` with ``operator.getitem``,
``aten.addmm.default`` of a transposed weight, ...), into the same IR as the
torch.fx front-end, through the same lowering
(:mod:`fastlrp.importers.torch_lowering`: shape propagation, layer builders, naming and
errors) and the same IR passes (:func:`fastlrp.passes.optimize`: BatchNorm folding,
output-softmax stripping). Both the training IR that ``torch.export.export``
produces and the core ATen IR left by ``ExportedProgram.run_decompositions()`` are
understood.

- Parameters and buffers are read from the program's state (``ep.module()`` turns
  them into ``get_attr`` nodes); tensors computed from them alone (``aten.t`` or
  ``aten.permute`` of a weight) are evaluated once and used as constants.
- Nodes the output does not depend on (shape asserts, guards, ``sym_size``) are
  skipped; a ``sym_size`` feeding a ``view`` is just a size.
- Dense/conv/BatchNorm nodes are named after the module owning the weight
  (``features.0``), other nodes after the module they came from when it is a
  ``torch.nn`` layer, else after the fx node.
- Errors name the ATen op, the fx node and, where known, the module it came from.

A TorchScript module (scripted or traced, e.g. from ``torch.jit.load``) is first
converted to an ExportedProgram with torch's own converter
(``torch._export.converter.TS2EPConverter``, which needs an example input); if that
fails, the error says to save the model with ``torch.export.save`` instead.
"""

from __future__ import annotations

import operator
import warnings

import numpy as np

from .torch_lowering import Converter, Meta, UnsupportedLayerError, lower, propagate, to_numpy

__all__ = ["from_exported", "is_exported_program", "is_script_module"]


def is_exported_program(obj) -> bool:
    try:
        from torch.export import ExportedProgram
    except ImportError:  # pragma: no cover - torch without torch.export
        return False
    return isinstance(obj, ExportedProgram)


def is_script_module(obj) -> bool:
    import torch

    return isinstance(obj, (torch.jit.ScriptModule, torch.jit.ScriptFunction))


def _op_name(target) -> str:
    """``aten.conv2d.default`` for an OpOverload, a readable name otherwise."""
    name = getattr(target, "name", None)
    if callable(name):
        try:
            ns, rest = target.name().split("::", 1)
            if "." not in rest:
                rest += ".default"
            return f"{ns}.{rest}"
        except Exception:  # noqa: BLE001
            pass
    return getattr(target, "__name__", None) or repr(target)


# --------------------------------------------------------------------------------------------
# the ATen front-end


class _AtenConverter(Converter):
    """Converts an ATen-level fx graph (an exported program's module) with the shared machinery."""

    unwrap_output_tuple = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._build_aten_tables()

    def _build_aten_tables(self):
        aten = self.torch.ops.aten
        self.aten_kind: dict = {}
        self.aten_dims: dict = {}

        def reg(kind, *names, dims=None):
            for nm in names:
                packet, _, overload = nm.partition(".")
                op = getattr(getattr(aten, packet, None), overload or "default", None)
                if op is not None:
                    self.aten_kind[op] = kind
                    if dims is not None:
                        self.aten_dims[op] = dims

        # ops with the same positional signature as their torch / F counterparts: handled by convert_kind
        reg("add", "add.Tensor", "add.Scalar", "add_.Tensor")
        reg("sub", "sub.Tensor", "sub.Scalar")
        reg("mul", "mul.Tensor", "mul.Scalar", "mul_.Tensor")
        reg("div", "div.Tensor", "div.Scalar")
        reg("neg", "neg")
        reg("cat", "cat", "concat", "concatenate")
        reg("flatten", "flatten.using_ints")
        reg("reshape", "view", "reshape", "_unsafe_view", "view_as", "reshape_as", "squeeze", "squeeze.dim",
            "squeeze.dims", "unsqueeze")
        reg("permute", "permute")
        reg("transpose", "transpose.int", "swapaxes", "swapdims")
        reg("identity", "clone", "contiguous", "alias", "detach")
        for k in ("relu", "leaky_relu", "elu", "tanh", "sigmoid", "gelu", "silu", "softplus", "hardtanh",
                  "hardswish", "hardsigmoid", "relu6"):
            reg(k, k, f"{k}_")
        reg("clamp", "clamp", "clamp_", "clip", "clip_")
        reg("softmax", "softmax.int", "_softmax")
        reg("log_softmax", "log_softmax.int", "_log_softmax")
        reg("mean", "mean.dim")
        reg("adaptive_avg_pool", "adaptive_avg_pool1d", dims=1)
        reg("adaptive_avg_pool", "adaptive_avg_pool2d", "_adaptive_avg_pool2d", dims=2)
        reg("max_pool", "max_pool1d", "max_pool1d_with_indices", dims=1)
        reg("max_pool", "max_pool2d", "max_pool2d_with_indices", dims=2)
        reg("avg_pool", "avg_pool1d", dims=1)
        reg("avg_pool", "avg_pool2d", dims=2)
        reg("pad", "pad")
        reg("upsample", "upsample_nearest1d.vec", "upsample_nearest2d.vec", "upsample_linear1d.vec",
            "upsample_bilinear2d.vec", "upsample_nearest1d", "upsample_nearest2d", "upsample_linear1d",
            "upsample_bilinear2d")
        reg("chunk", "chunk")
        reg("split", "split.Tensor", "split_with_sizes", "split.sizes")
        reg("unbind", "unbind.int")
        reg("narrow", "narrow")
        reg("select", "select.int")
        reg("aten_slice", "slice.Tensor")
        reg("layer_norm", "layer_norm", "native_layer_norm")
        reg("rms_norm", "rms_norm")
        reg("constant_pad", "constant_pad_nd")
        # ops needing the weights or special handling: convert_aten
        reg("dropout", "dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout", "native_dropout")
        reg("conv", "conv1d", "conv1d.padding", "conv2d", "conv2d.padding", "convolution", "_convolution",
            "conv_transpose1d", "conv_transpose2d.input")
        reg("linear", "linear")
        reg("addmm", "addmm")
        reg("mm", "mm", "matmul", "bmm")
        reg("sdpa", "scaled_dot_product_attention")
        reg("einsum", "einsum")
        reg("expand", "expand")
        reg("batch_norm", "batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm",
            "_native_batch_norm_legit")
        reg("size", "sym_size.int", "sym_numel", "sym_stride.int", "size.int")
        self.fn_dims.update(self.aten_dims)  # convert_kind looks the pooling rank up by target

    # -- naming and messages ------------------------------------------------------------------
    @staticmethod
    def module_of(n):
        """(path, class name) of the innermost module an exported node came from, or None."""
        stack = n.meta.get("nn_module_stack") if hasattr(n, "meta") else None
        if not stack:
            return None
        path, typ = list(stack.values())[-1]
        typ = typ if isinstance(typ, str) else getattr(typ, "__qualname__", str(typ))
        if not path or "<locals>" in typ:
            return None
        return str(path), typ.rsplit(".", 1)[-1], typ.startswith("torch.nn.modules.")

    def where(self, fxnode):
        m = self.module_of(fxnode)
        return f"'{fxnode.name}'" + (f" (in module '{m[0]}', {m[1]})" if m else "")

    def default_name(self, n):
        m = self.module_of(n)
        return m[0] if m and m[2] else n.name

    def add(self, fxnode, op, inputs, attrs=None, params=None, name=None, source=""):
        return super().add(fxnode, op, inputs, attrs, params, name=name or self.default_name(fxnode), source=source)

    def source_of(self, n, what):
        m = self.module_of(n)
        return f"{m[0]} ({m[1]}) {what}" if m else f"{n.name} ({what})"

    # -- arguments --------------------------------------------------------------------------
    def bind(self, n):
        """The node's arguments by schema name, defaults filled in."""
        out = {}
        for i, a in enumerate(n.target._schema.arguments):
            if i < len(n.args) and not a.kwarg_only:
                out[a.name] = n.args[i]
            elif a.name in n.kwargs:
                out[a.name] = n.kwargs[a.name]
            elif a.has_default_value():
                out[a.name] = a.default_value
            else:
                out[a.name] = None
        return out

    def const(self, n, arg, what, role, optional=False):
        """A tensor argument that must be a parameter/constant (a weight): returns the tensor."""
        torch = self.torch
        if arg is None and optional:
            return None
        if isinstance(arg, torch.fx.Node):
            v = self.env.get(arg)
            if isinstance(v, Meta) and isinstance(v.value, torch.Tensor):
                return v.value
            if isinstance(v, str):
                raise self.unsupported(n, what, f"its {role} '{arg.name}' is computed from the input; only "
                                       "parameters are supported there")
        raise self.unsupported(n, what, f"its {role} {arg!r} is not a parameter tensor")

    @staticmethod
    def owner(arg, suffix):
        """Module path of a parameter read by get_attr (``features.0`` for ``features.0.weight``)."""
        t = getattr(arg, "target", None)
        if getattr(arg, "op", None) == "get_attr" and isinstance(t, str) and t.endswith("." + suffix):
            return t[: -len(suffix) - 1]
        return None

    # -- dispatch ---------------------------------------------------------------------------
    def convert_module(self, n):
        raise self.unsupported(n, f"call of submodule '{n.target}' in an exported graph")

    def convert_function(self, n, target, fname):
        torch = self.torch
        if target is operator.getitem:
            base, idx = n.args[0], n.args[1]
            if isinstance(base, torch.fx.Node) and isinstance(self.env.get(base), str):
                if idx == 0:  # the result of a multi-output op (batch norm, max pool with indices)
                    self.env[n] = self.env[base]
                    return
                raise self.unsupported(n, f"use of output {idx} of {_op_name(base.target)} at '{base.name}'",
                                       "only the first output (the result) is supported")
        if not isinstance(target, torch._ops.OpOverload):
            if n.all_input_nodes and all(isinstance(self.env.get(a), Meta) for a in n.all_input_nodes):
                self.env[n] = Meta(self.consts.get(n.name, self.values.get(n.name)), fname)  # size arithmetic
                return
            return super().convert_function(n, target, fname)
        op = _op_name(target)
        what = f"ATen op {op}"
        kind = self.aten_kind.get(target)
        ins = n.all_input_nodes
        base = self.env.get(n.args[0]) if kind == "expand" else None
        if isinstance(base, Meta) and isinstance(base.value, self.torch.Tensor) and base.value.ndim and \
                base.value.shape[0] == 1:
            self.env[n] = base  # a parameter of batch 1 broadcast over the (static) batch: a class token
            return
        if kind == "size" or (ins and all(isinstance(self.env.get(a), Meta) for a in ins)) or (
            not ins and n.name in self.consts
        ):
            # computed from parameters / sizes only (e.g. aten.t of a weight): a constant
            self.env[n] = Meta(self.consts.get(n.name, self.values.get(n.name)), f"{op} at '{n.name}'")
            return
        if kind is None:
            raise self.unsupported(n, what)
        if kind in ("dropout", "conv", "linear", "addmm", "mm", "batch_norm", "constant_pad", "layer_norm", "rms_norm",
                    "aten_slice", "upsample"):
            return self.convert_aten(n, kind, what)
        if kind == "elu":
            a = self.bind(n)
            if a.get("scale", 1) != 1 or a.get("input_scale", 1) != 1:
                raise self.unsupported(n, what, f"scale={a.get('scale')}, input_scale={a.get('input_scale')} "
                                       "(SELU-like; only the plain ELU is supported)")
        self.convert_kind(n, kind, what, target)

    def convert_aten(self, n, kind, what):
        a = self.bind(n)
        src = self.source_of(n, what)

        def unsup(why):
            return self.unsupported(n, what, why)

        first = n.target._schema.arguments[0].name
        if kind == "dropout":
            x = self.tensor_input(n, a[first], what)
            if a.get("train") is True:
                warnings.warn(f"{what} at '{n.name}' is called with train=True; fastlrp treats it as the identity "
                              "(inference)", stacklevel=7)
            self.env[n] = x
            return
        if kind == "conv":
            x = self.tensor_input(n, a["input"], what)
            w = self.const(n, a["weight"], what, "weight")
            b = self.const(n, a.get("bias"), what, "bias", optional=True)
            d = w.ndim - 2
            if d not in (1, 2):
                raise unsup(f"{d}-D convolution (only 1-D and 2-D are supported)")
            if len(self.sample_shape(a["input"])) != d + 1:
                raise unsup(f"input of per-sample shape {self.sample_shape(a['input'])}; expected {d + 1} axes")
            if a.get("transposed") or "conv_transpose" in n.target._schema.name:
                self.add_conv_transpose(n, x, to_numpy(w), None if b is None else to_numpy(b), a["stride"],
                                        a["padding"], a.get("output_padding", 0), a["dilation"], a["groups"],
                                        name=self.owner(a["weight"], "weight"), source=src, unsup=unsup)
                return
            self.add_conv(n, x, d, w, b, a["stride"], a["padding"], a["dilation"], a["groups"],
                          name=self.owner(a["weight"], "weight"), source=src, unsup=unsup)
            return
        if kind == "mm" and isinstance(self.env.get(a["mat2"] if "mat2" in a else a["other"]), str):
            self.convert_attention_kind(n, "matmul", what, unsup)  # a product of two activations
            return
        if kind in ("linear", "addmm", "mm"):
            if kind == "linear":
                xa, w, b = a["input"], self.const(n, a["weight"], what, "weight"), a.get("bias")
                wnode = a["weight"]
            else:
                xa = a["mat1"] if kind == "addmm" else a[first]
                wnode = a["mat2"] if kind != "mm" or "mat2" in a else a["other"]
                wt = self.const(n, wnode, what, "second matrix")
                if wt.ndim != 2:
                    raise unsup(f"second matrix of shape {tuple(wt.shape)}; only a 2-D weight is supported")
                w = wt.t()
                b = a["self"] if kind == "addmm" else None
                if kind == "addmm" and (a.get("beta", 1) != 1 or a.get("alpha", 1) != 1):
                    raise unsup(f"beta={a.get('beta')}, alpha={a.get('alpha')} (only bias + x @ W is supported)")
            x = self.tensor_input(n, xa, what)
            bias = self.const(n, b, what, "bias", optional=True)
            if bias is not None:
                if bias.numel() != w.shape[0]:
                    raise unsup(f"bias of shape {tuple(bias.shape)} does not match {w.shape[0]} outputs")
                bias = bias.reshape(-1)
            if len(self.shape(xa)) < 2:
                raise unsup(f"applied to a tensor of shape {self.shape(xa)}; the batch axis comes first")
            name = self.owner(wnode, "weight")
            if name is None and len(wnode.all_input_nodes) == 1:  # aten.t / permute of a weight
                name = self.owner(wnode.all_input_nodes[0], "weight")
            self.add(n, "dense", [x], {}, {"weight": to_numpy(w), "bias": None if bias is None else to_numpy(bias)},
                     name=name, source=src)
            return
        if kind == "batch_norm":
            x = self.tensor_input(n, a["input"], what)
            if a.get("training") is True:
                raise unsup("training=True (batch statistics at inference are not supported); export the model in "
                            "eval mode")
            mean = self.const(n, a.get("running_mean"), what, "running mean", optional=True)
            var = self.const(n, a.get("running_var"), what, "running variance", optional=True)
            if mean is None or var is None:
                raise unsup("no running statistics (track_running_stats=False is not supported)")
            gamma = self.const(n, a.get("weight"), what, "weight", optional=True)
            beta = self.const(n, a.get("bias"), what, "bias", optional=True)
            mean, var = to_numpy(mean), to_numpy(var)
            gamma = to_numpy(gamma) if gamma is not None else np.ones_like(mean)
            beta = to_numpy(beta) if beta is not None else np.zeros_like(mean)
            scale = gamma / np.sqrt(var + float(a["eps"]))
            shift = beta - mean * scale
            path = self.owner(a.get("running_mean"), "running_mean") or self.default_name(n)
            self.add(n, "batchnorm", [x], {}, {"scale": scale, "shift": shift}, name=path, source=src)
            return
        if kind in ("layer_norm", "rms_norm"):
            x = self.tensor_input(n, a["input"], what)
            w = self.const(n, a.get("weight"), what, "weight", optional=True)
            b = self.const(n, a.get("bias"), what, "bias", optional=True)
            eps = a.get("eps")
            eps = float(self.torch.finfo(self.torch.float32).eps) if eps is None else float(eps)
            self.add_layernorm(n, x, a["normalized_shape"], None if w is None else to_numpy(w),
                               None if b is None else to_numpy(b), eps, kind == "rms_norm",
                               name=self.owner(a.get("weight"), "weight"), source=src, unsup=unsup)
            return
        if kind == "upsample":
            x = self.tensor_input(n, a[first], what)
            name = n.target._schema.name
            mode = "nearest" if "nearest" in name else ("linear" if "linear1d" in name else "bilinear")
            sf = a.get("scale_factors")
            if sf is None:  # the .default overloads: scales_h / scales_w / scales
                sf = [a.get(k) for k in ("scales_h", "scales_w", "scales") if k in a] or None
                sf = None if sf is None or any(v is None for v in sf) else sf
            self.add_upsample(n, x, mode, a.get("align_corners", False), sf, False, source=src, unsup=unsup)
            return
        if kind == "aten_slice":
            x = self.tensor_input(n, a["self"], what)
            rank = len(self.shape(a["self"]))
            dim = int(a.get("dim", 0)) % rank
            if dim == 0:
                raise unsup("slicing the batch axis")
            stop = a.get("end")
            stop = None if stop is not None and int(stop) >= 2**62 else stop  # INT64_MAX: to the end
            self.env[n] = self.add_slice(n, x, dim - 1, a.get("start"), stop, a.get("step", 1))
            return
        if kind == "constant_pad":
            x = self.tensor_input(n, a[first], what)
            self.add_pad(n, x, a["pad"], float(a.get("value", 0.0)), source=src, unsup=unsup)
            return
        raise unsup("")  # pragma: no cover


# --------------------------------------------------------------------------------------------
# entry point


def _script_to_exported(torch, sm, example):
    """Convert a TorchScript module to an ExportedProgram with torch's converter."""
    hint = ("save the model with torch.export.save(torch.export.export(model.eval(), (x,)), 'model.pt2') instead, "
            "or convert it in Python: fastlrp.from_torch(model, x).save('model.npz')")
    if example is None:
        raise TypeError("converting a TorchScript module needs an example input (one batch)")
    try:
        from torch._export.converter import TS2EPConverter
    except ImportError as e:  # pragma: no cover - older/newer torch
        raise UnsupportedLayerError(f"this torch ({torch.__version__}) has no TorchScript converter; {hint}") from e
    modes = {m: m.training for m in sm.modules()} if hasattr(sm, "modules") else {}
    try:
        if hasattr(sm, "eval"):
            sm.eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the converter's notes on unused buffers; TorchScript deprecation
            return TS2EPConverter(sm, (example,)).convert()
    except Exception as e:  # noqa: BLE001
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UnsupportedLayerError(f"the TorchScript module could not be converted to a torch.export program "
                                    f"(torch._export.converter): {type(e).__name__}: {msg}. Please {hint}") from e
    finally:
        for m, t in modes.items():
            m.training = t


def _example_for(torch, example, spec):
    """The example as a tensor that the program accepts: batch axis, dtype, a static batch size."""
    x = example if isinstance(example, torch.Tensor) else torch.as_tensor(np.asarray(example))
    if spec is None:
        return x
    if x.ndim == spec.ndim - 1:
        x = x.unsqueeze(0)
    if spec.is_floating_point():
        x = x.to(dtype=spec.dtype)
    b = spec.shape[0] if spec.ndim else None
    if isinstance(b, int) and x.ndim == spec.ndim and x.shape[0] != b and x.shape[0] >= 1 and b >= 1:
        # the program was exported with a static batch size: repeat the first sample to fill it
        x = x[:1].expand(b, *x.shape[1:]).clone()
    return x


def from_exported(program, example_input=None, *, keep_output_activation: bool = False, name: str | None = None):
    """Convert a ``torch.export.ExportedProgram`` or a TorchScript module (see the module docstring)."""
    import torch

    what = "exported program"
    model_name = name
    if is_script_module(program):
        what = "TorchScript module"
        if model_name is None:
            model_name = getattr(program, "original_name", None) or type(program).__name__
        if example_input is not None and not isinstance(example_input, torch.Tensor):
            example_input = torch.as_tensor(np.asarray(example_input))
        if example_input is not None:
            try:
                p = next(program.parameters())
                example_input = example_input.to(dtype=p.dtype)
            except (StopIteration, AttributeError):
                pass
        program = _script_to_exported(torch, program, example_input)
    try:
        gm = program.module()
    except Exception as e:  # noqa: BLE001
        raise UnsupportedLayerError(f"cannot unlift the {what}'s graph (ExportedProgram.module()): "
                                    f"{type(e).__name__}: {e}") from e
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedLayerError(f"the {what} takes {len(placeholders)} inputs "
                                    f"({', '.join(p.name for p in placeholders)}); only single-input models are "
                                    "supported")
    spec = placeholders[0].meta.get("val")
    spec = spec if isinstance(spec, torch.Tensor) else None
    if example_input is None:
        ex = getattr(program, "example_inputs", None)
        if ex and ex[0]:
            example_input = ex[0][0]
        else:
            raise TypeError(f"the {what} has no stored example inputs; pass an example input to learn the shapes")
    x = _example_for(torch, example_input, spec)
    values, tensor_nodes, consts = propagate(torch, gm, x)
    conv = _AtenConverter(torch, gm, values, tensor_nodes, consts)
    if model_name is None:
        model_name = "ExportedProgram"
    meta = {"importer": "fastlrp.importers.torch_export", "framework": f"torch {torch.__version__}",
            "name": model_name, "layout": "channels_first"}
    return lower(conv, meta, keep_output_activation)
