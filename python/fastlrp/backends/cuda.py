"""The GPU engine: every node on the device, relevance computed and returned there.

``CudaBackend`` runs on :mod:`fastlrp._cuda` (nvcc kernels, a real GPU).
``CudaBackend(emulate=True)`` (``backend="cuda-emu"``) runs the SAME kernel
source on :mod:`fastlrp._cuda_emu`, a host build under a SIMT emulator
(``src/cuda/simt.h``): slow, and only meant to test the engine and its kernels
on machines without a GPU.

Per Explainer (``prepare``): the weights and every model-constant transform of
the CPU backend (W, ``[W ; W+]``, ``[W+ | W-]``, the transposed backward weights
``W^T``, ``[W+; W-]^T``, ``[Wu; Wd]^T``, W^2, ones, the ZBox/Flat/WSquare constant
sums, pooling matrices) are computed once on the host and uploaded once.

Per batch: activations, forward sums and relevance stay in device memory
(:class:`DeviceArray`); dense/conv layers run the implicit-GEMM kernel (sign
split while the image tile is gathered, bias / second sum in the epilogue), the
per-target division ``g = R / s(z)`` is one fused elementwise kernel, and the
backward pass is one implicit-GEMM transposed convolution per term whose
epilogue multiplies by the input (x, x+, x-, x - l).  Only the model's output
(for the target seeds) and the final relevance cross to the host, and not even
that for device inputs: PyTorch CUDA tensors, CuPy arrays and anything with
``__cuda_array_interface__`` are read in place and the relevance comes back as
the same kind of array, zero-copy.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

import numpy as np

from .. import _ext
from ..ops.linear import PARAMETRIC_RULES
from ..ops.pool import pool2d_geometry, separable_matrices
from ..rules import stabilizer_of
from .base import BackendError, DeviceOutOfMemory
from .dispatch import prepare as dispatch_prepare
from .dispatch import register_kernel
from .linear_plan import MUL_EPILOGUES, LinearPlan

__all__ = ["CudaBackend", "DeviceArray"]


def _load_emu():
    mod, why = _ext.cuda_emu()
    if mod is None:
        raise BackendError(f"the SIMT emulator build is not available: {why}")
    return mod


class _Allocation:
    """Frees one device allocation when the last view of it goes away."""

    __slots__ = ("mod", "ptr", "__weakref__")

    def __init__(self, mod, nbytes: int, stream: int = 0):
        self.mod = mod
        try:
            # stream-ordered: usable at once on `stream`; freed on the compute
            # stream (0) after its last use there
            self.ptr = mod.malloc(int(nbytes), stream)
        except MemoryError as e:  # the module's OutOfMemoryError (a MemoryError)
            raise DeviceOutOfMemory(str(e), getattr(e, "requested", nbytes), getattr(e, "free", None)) from None

    def __del__(self):
        ptr, self.ptr = getattr(self, "ptr", 0), 0
        if ptr:
            try:
                self.mod.free(ptr)
            except Exception:  # interpreter shutdown, or a dead context: nothing to do
                pass


class DeviceArray:
    """A C-contiguous float32 (or int32) array in device memory.

    Owns its memory (``owner`` is an allocation) or borrows it from a user's
    array (``owner`` is that array, kept alive).  Exposes
    ``__cuda_array_interface__`` (real GPU only), so ``torch.as_tensor`` and
    ``cupy.asarray`` wrap it without a copy.
    """

    __slots__ = ("mod", "ptr", "shape", "dtype", "owner")

    def __init__(self, mod, shape, dtype=np.float32, ptr: Optional[int] = None, owner: Any = None,
                 stream: int = 0):
        self.mod = mod
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        if ptr is None:
            owner = _Allocation(mod, max(self.nbytes, 1), stream)
            ptr = owner.ptr
        self.ptr, self.owner = int(ptr), owner

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def reshape(self, *shape) -> "DeviceArray":
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = list(shape)
        if -1 in shape:
            k = shape.index(-1)
            rest = int(np.prod([s for i, s in enumerate(shape) if i != k], dtype=np.int64))
            shape[k] = self.size // max(rest, 1)
        if int(np.prod(shape, dtype=np.int64)) != self.size:
            raise ValueError(f"cannot reshape a device array of shape {self.shape} into {tuple(shape)}")
        return DeviceArray(self.mod, shape, self.dtype, self.ptr, self.owner)

    def numpy(self) -> np.ndarray:
        """A host copy."""
        out = np.empty(self.shape, self.dtype)
        if self.size:
            self.mod.memcpy_dtoh(out, self.ptr)
        return out

    def copy(self) -> "DeviceArray":
        out = DeviceArray(self.mod, self.shape, self.dtype)
        self.mod.memcpy_dtod(out.ptr, self.ptr, self.nbytes)
        return out

    def __add__(self, other: "DeviceArray") -> "DeviceArray":
        if not isinstance(other, DeviceArray) or other.size != self.size:
            raise ValueError("device arrays of different sizes cannot be added")
        out = self.copy()
        self.mod.add_inplace(out.ptr, other.ptr, self.size)
        return out

    @property
    def __cuda_array_interface__(self):
        if self.mod.emulated:
            raise AttributeError("an emulated device array has no __cuda_array_interface__")
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False), "version": 3,
                "strides": None, "stream": 1}

    def __repr__(self):
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype}, emulated={bool(self.mod.emulated)})"


def _cai_of(x):
    """__cuda_array_interface__ of a device array (torch tensors: of a detached view)."""
    if hasattr(x, "detach") and getattr(x, "is_cuda", False):
        x = x.detach()
    return x, getattr(x, "__cuda_array_interface__", None)


class CudaBackend:
    """Float32 GPU kernels (:mod:`fastlrp._cuda`), device-resident explanations.

    Parameters
    ----------
    device : int
        CUDA device index.
    emulate : bool
        Run the same kernels on the CPU SIMT emulator (:mod:`fastlrp._cuda_emu`),
        for tests without a GPU. Slow.
    """

    dtype = np.dtype(np.float32)
    is_device = True
    kernels = "cuda"  # the kernel family, on a GPU and on the emulator alike

    def __init__(self, device: int = 0, emulate: bool = False, module=None):
        if module is not None:
            mod = module
        elif emulate:
            mod = _load_emu()
        else:
            if _ext.cuda is None:
                raise BackendError(f"CUDA backend not built: {_ext.cuda_error}")
            if not _ext.cuda_available():
                raise BackendError(f"CUDA backend built but no GPU is usable: {_ext.cuda_unavailable_reason()}")
            mod = _ext.cuda
        self.mod = mod
        self.emulated = bool(mod.emulated)
        self.name = "cuda-emu" if self.emulated else "cuda"
        n = mod.device_count()
        if not 0 <= int(device) < max(n, 1):
            raise BackendError(f"CUDA device {device} does not exist ({n} device(s))")
        self.device = int(device)
        mod.set_device(self.device)
        self.device_name = mod.device_name(self.device)
        self._copy_stream = None
        self._lock = threading.Lock()

    # -- memory ------------------------------------------------------------------------
    def empty(self, shape, dtype=np.float32) -> DeviceArray:
        return DeviceArray(self.mod, shape, dtype)

    def upload(self, a: np.ndarray) -> DeviceArray:
        a = np.ascontiguousarray(a)
        if a.dtype not in (np.float32, np.int32):
            a = a.astype(np.float32)
        d = DeviceArray(self.mod, a.shape, a.dtype)
        if a.size:
            self.mod.memcpy_htod(d.ptr, a)
        return d

    def to_device(self, a) -> DeviceArray:
        return a if isinstance(a, DeviceArray) else self.upload(np.asarray(a))

    def to_host(self, a) -> np.ndarray:
        return a.numpy() if isinstance(a, DeviceArray) else np.asarray(a)

    def memory_stats(self) -> dict:
        free, total = self.mod.mem_get_info()
        return {"bytes_in_use": int(self.mod.bytes_in_use()), "peak_bytes": int(self.mod.peak_bytes()),
                "device_free": int(free), "device_total": int(total)}

    def reset_peak(self):
        self.mod.reset_peak()

    def synchronize(self):
        self.mod.synchronize()

    def stage(self, a: np.ndarray) -> DeviceArray:
        """Asynchronous upload of a host batch: copied into one of two pinned
        buffers, sent on a copy stream, and the compute stream waits for it (an
        event).  Staging batch k+1 before explaining batch k overlaps its copy with
        batch k's compute."""
        a = np.ascontiguousarray(a, dtype=np.float32)
        mod = self.mod
        with self._lock:
            if self._copy_stream is None:
                self._copy_stream = mod.stream_create()
                self._slots = [[None, mod.event_create()], [None, mod.event_create()]]
                self._slot = 0
            slot = self._slots[self._slot]
            self._slot = 1 - self._slot
            buf, ev = slot
            if buf is not None:
                mod.event_synchronize(ev)  # this slot's previous copy has finished
            if buf is None or buf.nbytes < a.nbytes:
                buf = slot[0] = mod.pinned_empty(max(a.nbytes, 1))
            host = buf[: a.nbytes].view(np.float32).reshape(a.shape)
            np.copyto(host, a)
            # allocated on the copy stream: memory the pool hands back is then free of
            # pending compute-stream work before the copy writes into it
            d = DeviceArray(mod, a.shape, stream=self._copy_stream)
            if a.size:
                mod.memcpy_htod(d.ptr, host, self._copy_stream, True)
            mod.event_record(ev, self._copy_stream)
            mod.stream_wait_event(0, ev)  # the compute stream (legacy default) waits for the copy
        return d

    # -- batch plumbing for the Explainer ----------------------------------------------
    def batch_slice(self, a: DeviceArray, s: int, e: int) -> DeviceArray:
        """Samples s..e of a batch, as a view (no copy)."""
        row = a.nbytes // max(a.shape[0], 1)
        return DeviceArray(self.mod, (e - s,) + a.shape[1:], a.dtype, a.ptr + s * row, a.owner)

    def concat_batch(self, parts) -> DeviceArray:
        out = self.empty((sum(p.shape[0] for p in parts),) + parts[0].shape[1:], parts[0].dtype)
        off = 0
        for p in parts:
            self.mod.memcpy_dtod(out.ptr + off, p.ptr, p.nbytes)
            off += p.nbytes
        return out

    def stack_targets(self, results) -> DeviceArray:
        """K relevance arrays (N, *s) -> (N, K, *s) on the device."""
        K, first = len(results), results[0]
        N = first.shape[0]
        row = first.size // max(N, 1)
        out = self.empty((N, K) + first.shape[1:])
        for k, r in enumerate(results):
            self.mod.copy_block(r.ptr, out.ptr, N, row, K * row, k * row, row)
        return out

    def moveaxis_last(self, a: DeviceArray) -> DeviceArray:
        """(N, C, *sp) -> (N, *sp, C) (channels-last models' relevance)."""
        perm = [0] + list(range(2, a.ndim)) + [1]
        out = self.empty(tuple(a.shape[p] for p in perm))
        self.mod.permute(a.ptr, out.ptr, list(a.shape), perm)
        return out

    # -- user arrays on the device ----------------------------------------------------
    def accepts(self, x) -> bool:
        """True for arrays that live in GPU memory (torch CUDA, CuPy, CAI, DLPack)."""
        if isinstance(x, DeviceArray):
            return True
        if getattr(x, "is_cuda", False):
            return True
        if hasattr(x, "__cuda_array_interface__"):
            return True
        dev = getattr(x, "__dlpack_device__", None)
        if dev is not None:
            try:
                return int(dev()[0]) in (2, 3, 13)  # kDLCUDA, kDLCUDAHost, kDLCUDAManaged
            except Exception:  # noqa: BLE001
                return False
        return False

    def wrap(self, x, what: str = "input") -> DeviceArray:
        """A zero-copy DeviceArray over a user's GPU array, validated."""
        if isinstance(x, DeviceArray):
            return x
        if self.emulated:
            raise BackendError(f"the emulated CUDA backend cannot read GPU arrays ({type(x).__name__}); pass NumPy")
        obj, cai = _cai_of(x)
        if cai is None:
            raise BackendError(
                f"{what}: {type(x).__name__} lives on a GPU but has no __cuda_array_interface__; "
                "pass a PyTorch CUDA tensor, a CuPy array or a NumPy array"
            )
        shape = tuple(int(s) for s in cai["shape"])
        typestr = cai["typestr"]
        if np.dtype(typestr) != np.float32:
            raise BackendError(f"{what}: GPU array must be float32, got {np.dtype(typestr)}; convert it first "
                               "(e.g. x.float() or x.astype(cupy.float32))")
        strides = cai.get("strides")
        if strides is not None:
            expect, acc = [], 4
            for s in reversed(shape):
                expect.append(acc)
                acc *= s
            if tuple(strides) != tuple(reversed(expect)) and int(np.prod(shape)) > 1:
                raise BackendError(f"{what}: GPU array must be C-contiguous (strides {tuple(strides)}); "
                                   "call .contiguous() / cupy.ascontiguousarray first")
        ptr = int(cai["data"][0])
        if ptr and int(np.prod(shape)):
            dev = self.mod.pointer_device(ptr)
            if dev != self.device:
                where = "host memory" if dev < 0 else f"device {dev}"
                raise BackendError(f"{what}: GPU array is in {where}, the Explainer runs on device {self.device}")
        return DeviceArray(self.mod, shape, np.float32, ptr, owner=obj)

    def like(self, result: DeviceArray, template):
        """Return ``result`` as the kind of array ``template`` is (torch, CuPy), zero-copy."""
        mod = type(template).__module__.split(".")[0]
        if mod == "torch":
            import torch  # noqa: PLC0415

            return torch.as_tensor(result, device=template.device)
        if mod == "cupy":
            import cupy  # noqa: PLC0415

            return cupy.asarray(result)
        return result

    # -- ops -----------------------------------------------------------------------------
    def prepare(self, graph, node, rule):
        return dispatch_prepare(self, graph, node, rule)


# ------------------------------------------------------------------------------------------
# ops
# ------------------------------------------------------------------------------------------
class _PassOp:
    """Views and identities: no kernel, no copy."""

    def __init__(self, fwd, rel):
        self.fwd, self.rel = fwd, rel

    def forward(self, inputs):
        return self.fwd(inputs[0]), None

    def relevance(self, ctx, R):
        return self.rel(R)


def _stab(be, z: DeviceArray, eps: float) -> DeviceArray:
    s = be.empty(z.shape)
    be.mod.stabilize(z.ptr, s.ptr, z.size, float(eps))
    return s


class _LinearOp:
    """Dense / conv with a parametric rule: implicit-GEMM kernels on the operands of
    :class:`LinearPlan` as unpacked row-major device matrices, and a
    transposed-gather backward for every stride (no col2im)."""

    def __init__(self, be, graph, node, rule, nonneg):
        self.be = be
        self.h = p = LinearPlan(graph, node, rule, nonneg)
        self.node, self.rule, self.kind = node, rule, p.kind
        self.epi = dict(be.mod.epilogues)
        self.rule_code = dict(be.mod.rule_kinds)[p.kind]
        self.bias = None if p.b is None else be.upload(p.b)
        self.neg_bias = None if p.neg_b is None else be.upload(p.neg_b)  # (LinearPlan.abs_form)
        self.zc = None if p.zc is None else be.upload(p.zc)
        (self.A_fwd_pos, self.A_fwd, self.A_pos, self.A_posneg, self.A_abs, self.bwd_pos,
         self.bwd_signed) = p.operands(self._upload, self._bwd_term)

    def _upload(self, A2d):
        A2d = np.ascontiguousarray(A2d, dtype=np.float32)
        return (self.be.upload(A2d), A2d.shape[0] // self.h.G)

    def _bwd_term(self, Wst, epi, off):
        """A[g*Cg + ci, (oi, ky, kx)] = Wst[g*O'g + oi, ci, ky, kx]: transposed, not flipped."""
        p = self.h
        G, Cg = p.G, p.Cg
        KH, KW = p.kernel
        Ogs = Wst.shape[0] // G
        Wb = Wst.reshape(G, Ogs, Cg, KH, KW).transpose(0, 2, 1, 3, 4).reshape(G * Cg, Ogs * KH * KW)
        return (self._upload(Wb), self.epi[epi], epi in MUL_EPILOGUES,
                None if off is None else self.be.upload(np.asarray(off, np.float32)))

    def _conv(self, x, A, y, *, sign=0, epi=None, bias=None, y2=None, split=0, transposed=False,
              mul=None, off=None, accumulate=False, geo=None):
        h = self.h
        (pt, _), (pl, _) = h.pad
        n, c, hh, ww, oh, ow = geo
        Adev, m = A
        self.be.mod.conv_gemm(
            x.ptr, Adev.ptr, y.ptr, n=n, c=c, h=hh, w=ww, groups=h.G, m=m, kh=h.kernel[0], kw=h.kernel[1],
            sh=h.stride[0], sw=h.stride[1], ph=pt, pw=pl, dh=h.dil[0], dw=h.dil[1], oh=oh, ow=ow, sign=sign,
            transposed=transposed, epi=self.epi["none"] if epi is None else epi,
            bias=0 if bias is None else bias.ptr,
            mul=0 if mul is None else mul.ptr, off=0 if off is None else off.ptr, accumulate=accumulate,
            y2=0 if y2 is None else y2.ptr, split=split)

    def forward(self, inputs):
        h, be = self.h, self.be
        x = inputs[0]
        N = x.shape[0]
        if x.ndim < 2 or x.size != N * h.rows * h.C * h.H * h.W:
            raise BackendError(f"{self.node.describe()}: input of shape {x.shape} (batch first) does not fit the "
                               f"layer's input shape {h.in_shape}")
        n = N * h.rows  # a dense layer's positions run as more samples
        geo = (n, h.C, h.H, h.W, h.OH, h.OW)
        epi = self.epi["bias"] if self.bias is not None else self.epi["none"]
        nonneg = True
        if h.needs_psum or self.bwd_signed is not self.bwd_pos:
            nonneg = h.static_nonneg or not (be.mod.min_value(x.ptr, x.size) < 0)
        out = be.empty((n, h.O, h.OH, h.OW))
        psum = None
        if h.needs_psum and nonneg and self.A_fwd_pos is not None:
            psum = be.empty(out.shape)
            self._conv(x, self.A_fwd_pos, out, epi=epi, bias=self.bias, y2=psum, split=h.O, geo=geo)
        else:
            self._conv(x, self.A_fwd, out, epi=epi, bias=self.bias, geo=geo)
            if h.needs_psum:
                psum = be.empty(out.shape)
                if nonneg:
                    self._conv(x, self.A_pos, psum, geo=geo)
                elif h.abs_form:  # psum = (W x + b + |W| |x| - b) / 2
                    nb = self.neg_bias
                    self._conv(x, self.A_abs, psum, sign=2, epi=self.epi["bias" if nb is not None else "none"],
                               bias=nb, geo=geo)
                    be.mod.add_inplace(psum.ptr, out.ptr, psum.size)
                    be.mod.scale(psum.ptr, psum.ptr, psum.size, 0.5)
                else:
                    self._conv(x, self.A_posneg, psum, sign=1, geo=geo)
        return out.reshape((N,) + h.out_shape), (x, out, psum, nonneg)

    def relevance(self, ctx, R):
        h, be = self.h, self.be
        x, out, psum, nonneg = ctx
        N = x.shape[0] * h.rows
        flat_sum = h.kind == "flat"
        sumdiff = h.abs_form and not nonneg  # g's sum and difference planes, one per term
        gch = h.G if flat_sum else h.O * (1 if sumdiff else h.halves)
        g = be.empty(((2,) if sumdiff else ()) + (N, gch, h.OH, h.OW))
        be.mod.rule_g(self.rule_code, R.ptr, out.ptr, 0 if psum is None else psum.ptr,
                      0 if self.bias is None else self.bias.ptr, 0 if self.zc is None else self.zc.ptr, g.ptr,
                      n=N, O=h.O, P=h.OH * h.OW, groups=h.G, eps=h.eps, alpha=h.alpha, beta=h.beta, gamma=h.gamma,
                      zero_bias=h.zero_bias, flat_group_sum=flat_sum, sumdiff=sumdiff)
        terms = self.bwd_pos if nonneg else self.bwd_signed
        res = be.empty((N, h.C, h.H, h.W))
        geo = (N, gch, h.OH, h.OW, h.H, h.W)
        for k, (A, epi, needs_x, off) in enumerate(terms):
            gk = be.batch_slice(g, k, k + 1).reshape(g.shape[1:]) if sumdiff else g
            self._conv(gk, A, res, transposed=True, epi=epi, mul=x if needs_x else None, off=off,
                       accumulate=k > 0, geo=geo)
        return [res.reshape((x.shape[0],) + h.in_shape)]


class _MaxPoolOp:
    def __init__(self, be, graph, node):
        self.be = be
        self.g = pool2d_geometry(graph, node)
        self.in_shape, self.out_shape = tuple(graph[node.inputs[0]].shape), tuple(node.shape)

    def forward(self, inputs):
        g, be = self.g, self.be
        x = inputs[0]
        N = x.shape[0]
        y = be.empty((N, g.C, g.OH, g.OW))
        idx = be.empty((N, g.C, g.OH, g.OW), np.int32)
        be.mod.maxpool_forward(x.ptr, y.ptr, idx.ptr, planes=N * g.C, h=g.H, w=g.W, kh=g.kernel[0],
                               kw=g.kernel[1], sh=g.stride[0], sw=g.stride[1], ph=g.pad[0], pw=g.pad[1],
                               dh=g.dilation[0], dw=g.dilation[1], oh=g.OH, ow=g.OW)
        return y.reshape((N,) + self.out_shape), idx

    def relevance(self, idx, R):
        g, be = self.g, self.be
        N = idx.shape[0]
        r = be.empty((N, g.C, g.H, g.W))
        be.mod.maxpool_backward(R.ptr, idx.ptr, r.ptr, planes=N * g.C, in_size=g.H * g.W, out_size=g.OH * g.OW)
        return [r.reshape((N,) + self.in_shape)]


class _AvgPoolOp:
    """Average / adaptive pooling as separable per-axis matrices (the registry's),
    each output looping over its window only (band tables); Norm or Flat per channel."""

    def __init__(self, be, graph, node, rule):
        self.be, self.node, self.rule = be, node, rule
        mats = [np.asarray(m, np.float32) for m in separable_matrices(graph[node.inputs[0]].shape, node)]
        if len(mats) == 1:
            mats = [np.ones((1, 1), np.float32)] + mats
        self.mh, self.mw = mats
        ins = tuple(graph[node.inputs[0]].shape)
        self.in_shape, self.out_shape = ins, tuple(node.shape)
        self.C = ins[0]
        self.H, self.W = self.mh.shape[1], self.mw.shape[1]
        self.OH, self.OW = self.mh.shape[0], self.mw.shape[0]
        self.d_mh, self.d_mw = be.upload(self.mh), be.upload(self.mw)
        self.bands = [be.upload(t) for m in (self.mh, self.mw) for t in be.mod.avgpool_bands(m)]
        self.eps = stabilizer_of(rule)
        self.flat_den = None
        if rule.kind == "flat":
            ones = be.upload(np.ones((1, self.C, self.H, self.W), np.float32))
            z = self._pool(ones, 1)
            self.flat_den = _stab(be, z, self.eps)

    def _pool(self, x, N):
        be = self.be
        y = be.empty((N, self.C, self.OH, self.OW))
        be.mod.avgpool_forward(x.ptr, y.ptr, self.d_mh.ptr, self.d_mw.ptr, *(b.ptr for b in self.bands),
                               planes=N * self.C, h=self.H, w=self.W, oh=self.OH, ow=self.OW)
        return y

    def forward(self, inputs):
        x = inputs[0]
        N = x.shape[0]
        y = self._pool(x, N)
        s = None if self.rule.kind == "flat" else _stab(self.be, y, self.eps)
        return y.reshape((N,) + self.out_shape), (x, s)

    def relevance(self, ctx, R):
        x, s = ctx
        be = self.be
        N = x.shape[0]
        r = be.empty((N, self.C, self.H, self.W))
        flat = self.rule.kind == "flat"
        den = self.flat_den if flat else s
        be.mod.avgpool_relevance(R.ptr, den.ptr, 0 if flat else x.ptr, r.ptr, self.d_mh.ptr, self.d_mw.ptr,
                                 *(b.ptr for b in self.bands), planes=N * self.C, channels=self.C, h=self.H,
                                 w=self.W, oh=self.OH, ow=self.OW, den_per_sample=not flat)
        return [r.reshape((N,) + self.in_shape)]


class _AddOp:
    """Residual add, Norm rule (s(sum) kept from the forward pass) or Pass."""

    def __init__(self, be, node, rule):
        self.be, self.node, self.rule = be, node, rule
        self.eps = stabilizer_of(rule)

    def forward(self, inputs):
        be = self.be
        out = inputs[0].copy()
        for t in inputs[1:]:
            be.mod.add_inplace(out.ptr, t.ptr, out.size)
        s = None if self.rule.kind == "pass" else _stab(be, out, self.eps)
        return out, (inputs, s)

    def relevance(self, ctx, R):
        xs, s = ctx
        be = self.be
        res = []
        for x in xs:
            r = be.empty(x.shape)
            if s is None:
                be.mod.scale(R.ptr, r.ptr, R.size, 1.0 / len(xs))
            else:
                be.mod.add_relevance(x.ptr, R.ptr, s.ptr, r.ptr, R.size)
            res.append(r)
        return res


class _ActivationOp:
    def __init__(self, be, node):
        self.be, self.node = be, node
        a = node.attrs
        self.kind = dict(be.mod.ACTIVATIONS)[a["kind"]]
        self.param = float(a.get("negative_slope", 0.01)) if a["kind"] == "leaky_relu" else float(a.get("alpha", 1.0))

    def forward(self, inputs):
        x = inputs[0]
        if self.kind == 0:
            return x, None
        y = self.be.empty(x.shape)
        self.be.mod.activation_forward(self.kind, x.ptr, y.ptr, x.size, self.param)
        return y, None

    def relevance(self, ctx, R):
        return [R]


class _BatchNormOp:
    def __init__(self, be, node):
        self.be, self.node = be, node
        self.scale = be.upload(np.asarray(node.params["scale"], np.float32).reshape(-1))
        self.shift = be.upload(np.asarray(node.params["shift"], np.float32).reshape(-1))
        self.C = int(self.scale.size)

    def forward(self, inputs):
        x = inputs[0]
        N = x.shape[0]
        y = self.be.empty(x.shape)
        inner = x.size // max(N * self.C, 1)
        self.be.mod.batchnorm_forward(x.ptr, y.ptr, self.scale.ptr, self.shift.ptr, N, self.C, inner)
        return y, None

    def relevance(self, ctx, R):
        return [R]


class _PermuteOp:
    def __init__(self, be, graph, node):
        self.be, self.node = be, node
        self.perm = tuple(int(p) for p in node.attrs["perm"])
        self.inv = tuple(int(p) for p in np.argsort(self.perm))
        self.in_shape = tuple(graph[node.inputs[0]].shape)

    def _permute(self, x, perm):
        full = (0,) + tuple(p + 1 for p in perm)
        shape = tuple(x.shape[p] for p in full)
        y = self.be.empty(shape)
        self.be.mod.permute(x.ptr, y.ptr, list(x.shape), list(full))
        return y

    def forward(self, inputs):
        return self._permute(inputs[0], self.perm), None

    def relevance(self, ctx, R):
        return [self._permute(R, self.inv)]


class _ConcatOp:
    def __init__(self, be, graph, node):
        self.be, self.node = be, node
        axis = node.attrs["axis"]
        self.shapes = [tuple(graph[i].shape) for i in node.inputs]
        self.out_shape = tuple(node.shape)
        outer = int(np.prod(self.out_shape[:axis], dtype=np.int64))
        self.outer = outer
        self.rows = [int(np.prod(s[axis:], dtype=np.int64)) for s in self.shapes]
        self.row = int(np.prod(self.out_shape[axis:], dtype=np.int64))

    def forward(self, inputs):
        be = self.be
        N = max(x.shape[0] for x in inputs)  # a constant operand (a class token) has batch size 1
        y = be.empty((N,) + self.out_shape)
        off = 0
        for x, r in zip(inputs, self.rows):
            if x.shape[0] == N:
                be.mod.copy_block(x.ptr, y.ptr, N * self.outer, r, self.row, off, r)
            else:  # broadcast over the batch: its block of every sample
                step = self.outer * self.row * y.dtype.itemsize
                for s in range(N):
                    be.mod.copy_block(x.ptr, y.ptr + s * step, self.outer, r, self.row, off, r)
            off += r
        return y, None

    def relevance(self, ctx, R):
        be = self.be
        N = R.shape[0]
        res, off = [], 0
        for s, r in zip(self.shapes, self.rows):
            out = be.empty((N,) + s)
            be.mod.slice_block(R.ptr, out.ptr, N * self.outer, self.row, r, off, r)
            res.append(out)
            off += r
        return res


# ------------------------------------------------------------------------------------------
# kernel registrations (every other op and rule: the host fallback, with a warning)
# ------------------------------------------------------------------------------------------
@register_kernel("cuda", "dense", "conv", rules=tuple(k for k in PARAMETRIC_RULES if k != "pass"),
                 variants="ZBox on a dense layer over several positions: one bound per feature")
def _linear_kernel(be, graph, node, rule):
    if not LinearPlan.supported(graph, node, rule):
        return None
    return _LinearOp(be, graph, node, rule, graph.known_nonnegative(node.inputs[0]))


@register_kernel("cuda", "maxpool", rules=("winner",))
def _maxpool_kernel(be, graph, node, rule):
    return _MaxPoolOp(be, graph, node)


@register_kernel("cuda", "avgpool", "adaptive_avgpool", "upsample", rules=("norm", "flat"))
def _avgpool_kernel(be, graph, node, rule):
    return _AvgPoolOp(be, graph, node, rule)


@register_kernel("cuda", "add", variants="operands of one shape, no constant")
def _add_kernel(be, graph, node, rule):
    # broadcasting, and a constant (a batch of 1 at run time: a position embedding), run the
    # fallback; the kernel adds whole buffers of the output's size
    same = all(tuple(graph[i].shape) == tuple(node.shape) and graph[i].op != "const" for i in node.inputs)
    return _AddOp(be, node, rule) if same else None


@register_kernel("cuda", "input")
def _input_kernel(be, graph, node, rule):
    return _PassOp(lambda x: x, lambda R: [])


@register_kernel("cuda", "reshape")
def _reshape_kernel(be, graph, node, rule):
    in_shape, out_shape = tuple(graph[node.inputs[0]].shape), tuple(node.shape)
    return _PassOp(lambda x: x.reshape((x.shape[0],) + out_shape), lambda R: [R.reshape((R.shape[0],) + in_shape)])


@register_kernel("cuda", "permute")
def _permute_kernel(be, graph, node, rule):
    return _PermuteOp(be, graph, node)


@register_kernel("cuda", "concat")
def _concat_kernel(be, graph, node, rule):
    return _ConcatOp(be, graph, node)


@register_kernel("cuda", "activation", rules=("pass",), variants="not softmax, log_softmax")
def _activation_kernel(be, graph, node, rule):
    # softmax / log_softmax (kept output activations) have no device kernel: the fallback
    return _ActivationOp(be, node) if node.attrs["kind"] in dict(be.mod.ACTIVATIONS) else None


@register_kernel("cuda", "batchnorm", rules=("pass",))
def _batchnorm_kernel(be, graph, node, rule):
    return _BatchNormOp(be, node)
