"""The backend matrix: every registered op (``fastlrp.ops.names()``) with every rule
its spec allows, on every float32 backend (numba, cpu, cuda-emu: the CUDA kernel
source on the host SIMT emulator, cuda: a real GPU, marked ``gpu``), against the
float64 reference backend, then small whole networks.

The reference backend is the one oracle of the backends. It is itself checked
against an independent formulation (layers as explicit dense matrices, rules by
definition; tests/_oracle.py) in test_reference.py.

The op list comes from the registry: a newly registered op without an entry in
``CASES``, or a rule an op's spec allows that no case of that op runs, fails
``test_every_op_and_rule_has_a_case``. Activations get a case for every kind in
``fastlrp.ops.elementwise.ACTIVATIONS`` by construction.

Inputs are fresh random float32 values, never zero: signed (magnitudes in
[0.1, 1]), ReLU'd (a relu node before the op: the kernels' static x >= 0 path),
positive (the run-time x >= 0 path), or with ties (max pooling's first arg-max).
Seeds are random signed relevance of the op's output shape. The reference runs
on the same float32-representable numbers in float64, so only the backend's
float32 arithmetic is measured.

Tolerances (tests/_nets.py): max|R - R_ref| <= RTOL * max|R_ref| with RTOL =
RTOL_LAYER (1e-4) for one layer and RTOL_NET (1e-4) for a network. The forward
sums z are float32, so R / s(z) amplifies their rounding by sum|w x| / |z|;
every later layer adds its own. A wrong term (a missing x-, a wrong sign, a
padding tap) is O(1) relative, far above these bounds. Epsilon divides by
z = W x + b itself, which is unbounded when z cancels: on dense and conv layers
it gets, elementwise, the first-order effect of float32 rounding of z on top
(:func:`_division_allowance`), large only at such outputs (measured here: up to
1.3e-4 without it, and 9e-3 in the one draw where z cancels to 3e-5). Routed
relevance (Pass, winner-takes-all) meets RTOL_ROUTE (1e-6), forward outputs
RTOL_FORWARD (1e-5), and forward outputs of ops that only move values are
bitwise equal.

Conservation: where a rule promises it (Pass, winner-takes-all, Norm in the
matrix; the weight rules on layers built for it in test_linear_conservation),
the input relevance of each sample sums to its seed's sum on every backend, to
float32 rounding of the sum: |sum R_in - sum R| <= RTOL_LAYER * (sum|R_in| + sum|R|).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable

import numba
import numpy as np
import pytest

import fastlrp
from fastlrp import _ext, ops, rules
from fastlrp.backends.base import BackendError
from fastlrp.graph import GraphBuilder, conv_output_length
from fastlrp.ops.linear import conv_backward, conv_forward
from fastlrp.ops.elementwise import ACTIVATIONS
from fastlrp.rules import (
    AlphaBeta, AlphaBetaX, Epsilon, Flat, Gamma, Gate, GateEpsilon, Gradient, Norm, Pass, Taylor, Uniform,
    UniformEpsilon, WinnerTakesAll, WSquare, ZBox, ZPlus,
)
from _nets import (
    BACKENDS, RTOL_FORWARD, RTOL_LAYER, RTOL_NET, RTOL_ROUTE, branchy_cnn, cnn1d, explain_vs_reference, rel_err,
    signed, small_resnet, small_vgg, structure_net,
)

# ops without a device kernel run on the host on the GPU backends, with a one-time
# warning (fastlrp.backends.dispatch); that is expected here
pytestmark = pytest.mark.filterwarnings("ignore:fastlrp cuda.*runs on the host:RuntimeWarning")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These layers are tiny: starting the numba and OpenMP thread teams costs up to
    ten times their work on a loaded machine. The results do not depend on the
    thread count (1 vs 2 threads: test_numba_backend.py, test_cpu_kernels.py)."""
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    if _ext.core is not None:
        _ext.core.set_num_threads(1)
    yield
    numba.set_num_threads(before)
    if _ext.core is not None:
        _ext.core.set_num_threads(0)

#: The rule objects each rule kind is tested with (parameter and bias variants; the
#: last ones of epsilon, zplus, alphabeta, wsquare and norm set iNNvestigate's options,
#: which every float32 backend runs through the fallback).
RULE_VARIANTS = {
    "epsilon": (Epsilon(), Epsilon(epsilon=0.1, zero_bias=True), Epsilon(1e-7, guard="zero")),
    "zplus": (ZPlus(), ZPlus(zero_bias=True), ZPlus(1e-7, zero_bias=True, guard="zero", split_inputs=False)),
    "alphabeta": (AlphaBeta(2.0, 1.0), AlphaBeta(1.0, 0.0), AlphaBeta(3.0, 2.0, zero_bias=True),
                  AlphaBeta(2.0, 1.0, 1e-7, guard="zero", whole_bias=True), AlphaBeta(1.0, 0.0, whole_bias=True)),
    "gamma": (Gamma(0.25), Gamma(1.0, zero_bias=True)),
    "zbox": (ZBox(-2.0, 2.5),),
    "flat": (Flat(),),
    "wsquare": (WSquare(), WSquare(zero_bias=True), WSquare(1e-7, zero_bias=True, guard="zero")),
    "norm": (Norm(), Norm(1e-7, guard="zero")),
    "pass": (Pass(),),
    "winner": (WinnerTakesAll(),),
    "gate": (Gate(),),
    "uniform": (Uniform(),),
    "gradient": (Gradient(),),
    "alphabetax": (AlphaBetaX((2.0, 0.0), (1.0, 0.0), 1e-7, guard="zero"), AlphaBetaX(zero_bias=True)),
    "uniform_epsilon": (UniformEpsilon(), UniformEpsilon(epsilon=0.1)),
    "gate_epsilon": (GateEpsilon(), GateEpsilon(gate=1, epsilon=0.1)),
    "taylor": (Taylor(),),
}
LINEAR_KINDS = tuple(rules.PARAMETRIC_RULES)  # the weight rules (Pass on dense/conv: its own cases)


@dataclass(frozen=True)
class Case:
    """One small graph around the op under test (the node named "op", the graph's output).

    ``build(gb, h, rng)`` adds the op (and any branches it needs) after node ``h``.
    ``kinds``: the rule kinds run on this case (None: all its op allows).
    ``mode``: the input ("signed", "relu": a relu node before the op, "positive", "ties").
    ``absorbs``: the op drops relevance by design
    (padding), so it does not conserve. ``moves``: the forward pass only moves
    values (bitwise equal to the reference)."""

    id: str
    in_shape: tuple
    build: Callable = field(repr=False)
    kinds: tuple | None = None
    mode: str = "signed"
    batch: int = 3
    absorbs: bool = False
    moves: bool = False


# ----------------------------------------------------------------------------- dense / conv
def _linear(id, in_shape, wshape, bias, mode="signed", batch=3, kinds=LINEAR_KINDS, **conv):
    def build(gb, h, rng):
        W = rng.standard_normal(wshape)
        b = rng.standard_normal(wshape[0]) if bias else None
        if len(wshape) == 2:
            gb.dense(h, W, b, name="op")
        else:
            gb.conv(h, W, b, name="op", **conv)

    return Case(id, in_shape, build, kinds=kinds, mode=mode, batch=batch)


def _conv(in_shape, wshape, stride, padding, dilation, groups, bias, mode="signed", batch=3):
    id = f"{'x'.join(map(str, in_shape))}-w{'x'.join(map(str, wshape))}-s{stride}-p{padding}-d{dilation}-g{groups}"
    return _linear(id.replace(" ", ""), in_shape, wshape, bias, mode, batch, stride=stride, padding=padding,
                   dilation=dilation, groups=groups)


# (N, in, out): ones, primes, a batch larger than the CPU kernel's sample tile (8),
# an in-block edge (257 > 256), one output
DENSE_CASES = [
    _linear("1x1x1", (1,), (1, 1), True, batch=1),
    _linear("2x3x5", (3,), (5, 3), False, batch=2),
    _linear("5x17x7-relu", (17,), (7, 17), True, "relu", batch=5),
    _linear("3x257x11", (257,), (11, 257), True),
    _linear("17x100x33", (100,), (33, 100), False, batch=17),
    _linear("2x13x1-positive", (13,), (1, 13), True, "positive", batch=2),
    _linear("9x5x17-relu", (5,), (17, 5), False, "relu", batch=9),
    _linear("pass-square", (6,), (6, 6), True, kinds=("pass",)),
    # on the last axis of tokens (a transformer's Linear, Keras Dense on a sequence)
    _linear("tokens-3x4x6", (4, 6), (5, 6), True),
    _linear("tokens-2x2x3x7-relu", (2, 3, 7), (4, 7), False, "relu", batch=2),
]

CONV_CASES = [
    _conv((3, 7, 9), (5, 3, 3, 3), 1, 1, 1, 1, True),
    _conv((1, 1, 1), (1, 1, 1, 1), 1, 0, 1, 1, True),
    _conv((4, 8, 5), (6, 2, 3, 3), 2, ((1, 0), (0, 2)), 1, 2, False),
    _conv((6, 11, 13), (6, 2, 2, 3), (2, 1), ((1, 2), (0, 1)), (2, 1), 3, True, "relu"),
    _conv((2, 5, 5), (4, 2, 1, 1), 1, 0, 1, 1, True),
    _conv((3, 9, 9), (17, 3, 3, 3), 3, 2, 2, 1, True, "relu"),
    _conv((5, 1, 17), (7, 5, 1, 3), 1, ((0, 0), (2, 1)), 1, 1, False),
    _conv((4, 6, 6), (4, 1, 3, 3), 1, 1, 1, 4, True, "relu"),  # depthwise
    _conv((3, 19, 23), (20, 3, 5, 4), (3, 2), ((2, 1), (1, 3)), (1, 2), 1, True, batch=2),
    _conv((16, 4, 4), (33, 16, 3, 3), 1, 1, 1, 1, True, "relu", batch=2),
    _conv((1, 5, 5), (3, 1, 5, 5), 1, 2, 1, 1, True),  # kernel as large as the input
    _conv((2, 8, 11), (2, 1, 3, 3), (2, 3), ((1, 1), (0, 0)), (2, 1), 2, False),
    _conv((3, 8, 8), (4, 3, 3, 3), 1, 1, 1, 1, True, "positive", batch=2),
    # conv1d
    _conv((4, 19), (6, 2, 3), 2, ((2, 1),), 2, 2, True, batch=2),
    _conv((3, 1), (2, 3, 1), 1, 0, 1, 1, False, batch=2),
    _conv((5, 31), (7, 5, 4), 3, ((0, 3),), 1, 1, True, "relu", batch=2),
    _conv((2, 13), (3, 2, 3), 1, 1, 3, 1, True, batch=2),
    _conv((4, 10), (4, 1, 3), 1, 2, 3, 4, False, "positive", batch=2),
    _linear("pass-same-shape", (4, 6, 6), (4, 4, 3, 3), True, kinds=("pass",), padding=1),
]


# ----------------------------------------------------------------------------- pools
def _pool(id, in_shape, fn, kinds=None, mode="signed", batch=3, moves=False):
    return Case(id, in_shape, lambda gb, h, rng: fn(gb, h), kinds=kinds, mode=mode, batch=batch, moves=moves)


def _max(id, in_shape, fn, **kw):
    # max pooling's forward pass selects values: bitwise equal to the reference
    return _pool(id, in_shape, fn, moves=True, **kw)


MAXPOOL_CASES = [
    _max("2x2", (3, 8, 8), lambda gb, h: gb.maxpool(h, 2, name="op")),
    _max("3s2p1", (2, 9, 7), lambda gb, h: gb.maxpool(h, 3, 2, 1, name="op")),
    _max("3s1p1-overlap", (2, 8, 7), lambda gb, h: gb.maxpool(h, 3, 1, 1, name="op")),
    _max("overlap-dilated", (2, 11, 10),
          lambda gb, h: gb.maxpool(h, (3, 2), (1, 2), ((1, 1), (0, 1)), dilation=(2, 1), name="op")),
    _max("ceil", (2, 7, 9), lambda gb, h: gb.maxpool(h, 3, 2, 1, ceil_mode=True, name="op")),
    _max("ceil-dilated", (1, 11, 10),
          lambda gb, h: gb.maxpool(h, (3, 2), (2, 3), ((1, 0), (1, 1)), dilation=(2, 1), ceil_mode=True, name="op")),
    _max("1x1", (1, 1, 1), lambda gb, h: gb.maxpool(h, 1, name="op")),
    _max("1d-ceil", (3, 17), lambda gb, h: gb.maxpool(h, 3, 2, 1, dims=1, ceil_mode=True, name="op")),
    _max("1d-dilated", (2, 12), lambda gb, h: gb.maxpool(h, 2, 3, dilation=2, ceil_mode=True, dims=1, name="op")),
    # few distinct values: the first arg-max in window order must win
    _max("ties", (2, 9, 8), lambda gb, h: gb.maxpool(h, 3, 2, 1, name="op"), kinds=("winner",), mode="ties"),
    _max("ties-1d", (3, 13), lambda gb, h: gb.maxpool(h, 3, 2, 1, dims=1, name="op"), kinds=("winner",),
          mode="ties"),
]

AVGPOOL_CASES = [
    _pool("2x2", (3, 8, 8), lambda gb, h: gb.avgpool(h, 2, name="op"), kinds=("norm", "flat")),
    _pool("pad-incl-ceil", (2, 7, 9), lambda gb, h: gb.avgpool(h, 3, 2, 1, ceil_mode=True, count_include_pad=True,
                                                               name="op"), kinds=("norm", "flat")),
    _pool("pad-excl-ceil", (2, 7, 9), lambda gb, h: gb.avgpool(h, 3, 2, 1, ceil_mode=True, count_include_pad=False,
                                                               name="op"), kinds=("norm", "flat")),
    _pool("pad-excl-positive", (3, 7, 6), lambda gb, h: gb.avgpool(h, 3, 2, 1, ceil_mode=True,
                                                                   count_include_pad=False, name="op"),
          kinds=("norm", "flat"), mode="positive"),
    _pool("asym", (2, 9, 9), lambda gb, h: gb.avgpool(h, (3, 2), (2, 3), ((1, 1), (0, 1)), ceil_mode=True, name="op"),
          kinds=("norm", "flat")),
    _pool("divisor", (2, 6, 6), lambda gb, h: gb.avgpool(h, 3, 1, 1, divisor_override=5, name="op"),
          kinds=("norm", "flat")),
    _pool("1d-excl", (3, 17), lambda gb, h: gb.avgpool(h, 4, 3, 2, dims=1, count_include_pad=False, name="op"),
          kinds=("norm", "flat")),
    _pool("1d-divisor", (2, 10), lambda gb, h: gb.avgpool(h, 3, 2, 1, divisor_override=2, dims=1, name="op"),
          kinds=("norm", "flat"), mode="positive"),
    _pool("pass-same-shape", (2, 5, 5), lambda gb, h: gb.avgpool(h, 3, 1, 1, name="op"), kinds=("pass",)),
]

ADAPTIVE_CASES = [
    _pool("3x4", (2, 7, 10), lambda gb, h: gb.adaptive_avgpool(h, (3, 4), name="op"), kinds=("norm", "flat")),
    _pool("global", (5, 4, 4), lambda gb, h: gb.adaptive_avgpool(h, 1, name="op"), kinds=("norm", "flat")),
    _pool("global-positive", (2, 5, 9), lambda gb, h: gb.adaptive_avgpool(h, (1, 1), name="op"),
          kinds=("norm", "flat"), mode="positive"),
    _pool("1d", (2, 13), lambda gb, h: gb.adaptive_avgpool(h, (5,), dims=1, name="op"), kinds=("norm", "flat")),
    _pool("pass-same-shape", (2, 6, 6), lambda gb, h: gb.adaptive_avgpool(h, (6, 6), name="op"), kinds=("pass",)),
]


# ----------------------------------------------------------------------------- routing, merge, elementwise
def _case(id, in_shape, fn, **kw):
    return Case(id, in_shape, lambda gb, h, rng: fn(gb, h), **kw)


def _input_case(id, in_shape):
    # the graph is its input node alone (named "op"); the builder adds nothing
    return Case(id, in_shape, lambda gb, h, rng: None, moves=True)


ROUTING = dict(moves=True)


def _pad(id, in_shape, padding, value=0.0):
    # relevance arriving at padded positions is absorbed
    return _case(id, in_shape, lambda gb, h: gb.add_node("pad", h, {"padding": padding, "value": value}, name="op"),
                 absorbs=True, **ROUTING)


CASES = {
    "dense": DENSE_CASES,
    "conv": CONV_CASES,
    "maxpool": MAXPOOL_CASES,
    "avgpool": AVGPOOL_CASES,
    "adaptive_avgpool": ADAPTIVE_CASES,
    "input": [_input_case("3x4", (3, 4)), _input_case("5", (5,))],
    "reshape": [
        _case("view", (2, 3, 4), lambda gb, h: gb.reshape(h, (4, 6), name="op"), **ROUTING),
        _case("flatten", (3, 2, 2), lambda gb, h: gb.flatten(h, name="op"), **ROUTING),
    ],
    "permute": [
        _case("3d", (2, 3, 4), lambda gb, h: gb.permute(h, (2, 0, 1), name="op"), **ROUTING),
        _case("2d", (3, 5), lambda gb, h: gb.permute(h, (1, 0), name="op"), **ROUTING),
    ],
    "concat": [
        _case("channels", (2, 3, 4), lambda gb, h: gb.concat([h, gb.activation(h, "tanh")], axis=0, name="op")),
        _case("last-axis-3", (2, 3, 4), lambda gb, h: gb.concat([h, gb.permute(gb.permute(h, (0, 2, 1)), (0, 2, 1)), h],
                                                                axis=-1, name="op"), **ROUTING),
        _case("1d", (5,), lambda gb, h: gb.concat([gb.activation(h, "sigmoid"), h, h], axis=0, name="op")),
        # a class token: a constant of batch 1 before every sample's tokens, broadcast at run time
        Case("class-token", (4, 3), lambda gb, h, rng: gb.concat(
            [gb.add_node("const", [], params={"value": signed(rng, (1, 3))}), h], axis=0, name="op"), absorbs=True),
    ],
    "slice": [
        _case("channels-step", (5, 3, 4), lambda gb, h: gb.add_node(
            "slice", h, {"axis": 0, "start": 1, "stop": 5, "step": 2}, name="op"), absorbs=True, **ROUTING),
        _case("last-negative", (3, 6), lambda gb, h: gb.add_node(
            "slice", h, {"axis": -1, "start": -4, "stop": -1}, name="op"), absorbs=True, **ROUTING),
    ],
    "pad": [
        _pad("zeros", (2, 4, 5), ((0, 0), (1, 2), (2, 0))),
        _pad("crop-and-pad-value", (2, 4, 5), ((0, 0), (-1, 2), (1, -2)), 0.5),
        _pad("channels-negative-value", (3, 4), ((1, 1), (0, -1)), -1.5),
        _pad("crop-only", (3, 6), ((0, -1), (-2, -1))),
        _pad("1d", (6,), ((2, -1),), 0.25),
    ],
    # summands of one sign (x, tanh x, elu x): Norm divides by a sum that does not cancel
    "add": [
        _case("three", (3, 5), lambda gb, h: gb.add(h, gb.activation(h, "tanh"), h, name="op")),
        _case("two", (2, 3, 4), lambda gb, h: gb.add(h, gb.activation(h, "elu", alpha=0.7), name="op")),
        _case("broadcast", (2, 3, 4), lambda gb, h: gb.add(
            h, gb.activation(gb.adaptive_avgpool(h, 1), "tanh"), name="op"), mode="positive"),
        Case("const-operand", (2, 3), lambda gb, h, rng: gb.add(
            h, gb.add_node("const", [], params={"value": np.abs(signed(rng, (3,)))}), name="op"), absorbs=True),
        # a position embedding: the constant's batch of 1 broadcasts at run time
        Case("const-same-shape", (5, 7), lambda gb, h, rng: gb.add(
            h, gb.add_node("const", [], params={"value": np.abs(signed(rng, (5, 7)))}), name="op"), absorbs=True,
            mode="positive"),
    ],
    "activation": [
        *(_case(kind, (2, 3, 4), lambda gb, h, kind=kind: gb.activation(h, kind, name="op")) for kind in ACTIVATIONS),
        _case("leaky_relu-0.1", (2, 3, 4), lambda gb, h: gb.activation(h, "leaky_relu", negative_slope=0.1, name="op")),
        _case("elu-0.5", (2, 3, 4), lambda gb, h: gb.activation(h, "elu", alpha=0.5, name="op")),
        _case("softmax-1d", (7,), lambda gb, h: gb.activation(h, "softmax", name="op")),
        _case("relu6", (2, 3, 4), lambda gb, h: gb.activation(h, "hardtanh", min_val=0.0, max_val=6.0, name="op")),
        _case("clipped_relu", (2, 3, 4), lambda gb, h: gb.activation(
            h, "clipped_relu", max_value=0.8, threshold=0.2, negative_slope=0.3, name="op")),
        # the compiled CPU kinds over [-8, 8] (their exp and erf approximations), odd sizes
        *(Case(f"{kind}-wide", (37, 5), lambda gb, h, rng, kind=kind: gb.activation(
            gb.batchnorm(h, np.full(37, 6.0), np.linspace(-2.0, 2.0, 37)), kind, name="op"))
          for kind in ("gelu", "gelu_tanh", "silu")),
    ],
    "conv_transpose": [  # the fallback on every float32 backend (no kernel yet)
        Case("2d-s2-op1", (3, 4, 5), lambda gb, h, rng: gb.add_node("conv_transpose", h, {
            "dims": 2, "stride": (2, 2), "padding": ((1, 2), (1, 2)), "dilation": (1, 1), "groups": 1,
            "output_size": (8, 10)}, {"weight": signed(rng, (3, 2, 3, 3)), "bias": signed(rng, (2,))}, name="op"),
            kinds=LINEAR_KINDS),
        Case("1d-groups", (4, 6), lambda gb, h, rng: gb.add_node("conv_transpose", h, {
            "dims": 1, "stride": (3,), "padding": ((0, 0),), "dilation": (2,), "groups": 2, "output_size": (20,)},
            {"weight": signed(rng, (4, 1, 3))}, name="op"), kinds=LINEAR_KINDS, mode="relu"),
        Case("pass-1x1", (3, 4, 5), lambda gb, h, rng: gb.add_node("conv_transpose", h, {
            "dims": 2, "stride": (1, 1), "padding": ((0, 0), (0, 0)), "dilation": (1, 1), "groups": 1,
            "output_size": (4, 5)}, {"weight": signed(rng, (3, 3, 1, 1))}, name="op"), kinds=("pass",)),
    ],
    "upsample": [
        _case("bilinear", (2, 3, 4), lambda gb, h: gb.add_node("upsample", h, {
            "dims": 2, "size": (7, 9), "mode": "linear", "align_corners": False}, name="op"), mode="positive"),
        _case("nearest-x2", (2, 3, 4), lambda gb, h: gb.add_node("upsample", h, {
            "dims": 2, "size": (6, 8), "mode": "nearest", "scale": (0.5, 0.5)}, name="op"), mode="positive"),
        _case("linear-1d-corners", (3, 5), lambda gb, h: gb.add_node("upsample", h, {
            "dims": 1, "size": (9,), "mode": "linear", "align_corners": True}, name="op"), mode="positive"),
    ],
    "mul": [
        # squeeze-excitation: a sigmoid gate broadcast per channel
        _case("se-gate", (3, 4, 4), lambda gb, h: gb.add_node(
            "mul", [h, gb.activation(gb.adaptive_avgpool(h, 1), "sigmoid")], name="op"), kinds=("gate", "uniform")),
        Case("const-gate", (2, 5), lambda gb, h, rng: gb.add_node(
            "mul", [gb.add_node("const", [], params={"value": signed(rng, (5,))}), h], name="op"),
            kinds=("gate",)),  # Uniform would give the constant half, absorbed
        _case("no-gate", (2, 3, 4), lambda gb, h: gb.add_node("mul", [h, gb.activation(h, "tanh")], name="op"),
              kinds=("uniform",)),
    ],
    "const": [
        # the output does not depend on the input: nothing reaches it
        Case("alone", (3,), lambda gb, h, rng: gb.add_node("const", [], params={"value": signed(rng, (2, 3))},
                                                           name="op"), absorbs=True),
    ],
    "layernorm": [
        Case("tokens-affine", (4, 6), lambda gb, h, rng: gb.add_node(
            "layernorm", h, {"axes": (-1,), "eps": 1e-5}, {"weight": signed(rng, (1, 6)),
                                                          "bias": signed(rng, (1, 6))}, name="op")),
        Case("channels-first", (3, 4, 5), lambda gb, h, rng: gb.add_node(
            "layernorm", h, {"axes": (0,), "eps": 1e-6}, {"weight": signed(rng, (3, 1, 1))}, name="op")),
        _case("rms-two-axes", (3, 4, 5), lambda gb, h: gb.add_node(
            "layernorm", h, {"axes": (1, 2), "eps": 1e-5, "rms": True}, name="op")),
        Case("tokens-odd", (13, 37), lambda gb, h, rng: gb.add_node(
            "layernorm", h, {"axes": (-1,), "eps": 1e-6}, {"weight": signed(rng, (1, 37)),
                                                          "bias": signed(rng, (1, 37))}, name="op")),
        Case("two-axes-broadcast-affine", (3, 5, 7), lambda gb, h, rng: gb.add_node(
            "layernorm", h, {"axes": (1, 2), "eps": 1e-5}, {"weight": signed(rng, (1, 5, 1)),
                                                           "bias": signed(rng, (1, 1, 7))}, name="op")),
        Case("rms-affine", (5, 9), lambda gb, h, rng: gb.add_node(
            "layernorm", h, {"axes": (-1,), "eps": 1e-5, "rms": True}, {"weight": signed(rng, (1, 9)),
                                                                       "bias": signed(rng, (1, 9))}, name="op")),
    ],
    # attention: weights A = softmax(h h^T) (positive), values h; the scores h h^T; broadcast leading axes
    "matmul": [
        _case("attention-values", (2, 5, 3), lambda gb, h: gb.add_node("matmul", [gb.add_node(
            "softmax", gb.add_node("matmul", [h, h], {"transpose_b": True}), {"axis": -1}), h], name="op")),
        _case("scores", (2, 4, 3), lambda gb, h: gb.add_node(
            "matmul", [h, gb.activation(h, "tanh")], {"transpose_b": True}, name="op"), kinds=("uniform_epsilon",)),
        _case("broadcast", (2, 4, 3), lambda gb, h: gb.add_node("matmul", [gb.permute(h, (0, 2, 1)), gb.add_node(
            "slice", h, {"axis": 0, "start": 0, "stop": 1})], name="op"), kinds=("uniform_epsilon",)),
    ],
    "softmax": [
        _case("last-axis", (3, 5), lambda gb, h: gb.add_node("softmax", h, {"axis": -1}, name="op")),
        _case("middle-axis", (2, 4, 3), lambda gb, h: gb.add_node("softmax", h, {"axis": 1}, name="op")),
        # scores over a range of about 40 (the compiled exp), odd row length
        Case("last-axis-wide", (6, 37), lambda gb, h, rng: gb.add_node("softmax", gb.batchnorm(
            h, np.full(6, 20.0), signed(rng, 6)), {"axis": -1}, name="op")),
    ],
    "batchnorm": [
        Case("3d", (3, 4, 5), lambda gb, h, rng: gb.batchnorm(h, signed(rng, 3), signed(rng, 3), name="op")),
        Case("1d", (6,), lambda gb, h, rng: gb.batchnorm(h, signed(rng, 6), signed(rng, 6), name="op")),
    ],
}

#: Known gaps, each reported; strict, so a fix shows up as XPASS and fails.
KNOWN_FAILURES: dict = {}


def _matrix():
    for op, cases in CASES.items():
        if op not in ops.names():
            continue  # test_every_op_and_rule_has_a_case says so
        allowed = ops.spec(op).rules
        for case in cases:
            for kind in case.kinds or allowed:
                marks = []
                if (op, kind) in KNOWN_FAILURES:
                    marks = [pytest.mark.xfail(raises=(ValueError, BackendError), strict=True,
                                               reason=KNOWN_FAILURES[op, kind])]
                for rule in RULE_VARIANTS.get(kind, ()):
                    yield pytest.param(op, case, rule, id=f"{op}-{case.id}-{rule}", marks=marks)


def test_every_op_and_rule_has_a_case():
    """Driven by the registry: a new op, or a new rule of an op, needs a case here."""
    problems = [f"add a case for op '{op}' to CASES in tests/test_backend_matrix.py"
                for op in ops.names() if not CASES.get(op)]
    problems += [f"CASES names op '{op}', which is not registered" for op in CASES if op not in ops.names()]
    for op, cases in CASES.items():
        if op not in ops.names():
            continue
        allowed = ops.spec(op).rules
        run = {k for c in cases for k in (c.kinds or allowed)}
        problems += [f"add a case for rule '{k}' of op '{op}'" for k in allowed if k not in run]
        problems += [f"a case of op '{op}' runs rule '{k}', which its spec does not allow" for k in run - set(allowed)]
        problems += [f"add variants of rule kind '{k}' to RULE_VARIANTS" for k in allowed if not RULE_VARIANTS.get(k)]
    assert not problems, "\n".join(problems)
    # every kind of rule object is tested under its own kind
    assert all(r.kind == k for k, rs in RULE_VARIANTS.items() for r in rs)


def _input(rng, case, shape):
    if case.mode == "ties":
        return (rng.integers(-2, 2, size=shape) + 0.5).astype(np.float32)
    x = signed(rng, shape)
    return np.abs(x) if case.mode == "positive" else x


def _conserves(op, case, rule):
    """Whether all of the seed must reach the input: Pass and winner-takes-all route
    it, Norm shares it out, when the stabilizer is at 1e-6 and the inputs have no
    zeros (no relu before the op). Padding absorbs what arrives at padded
    positions. The weight rules' conservation needs weights and inputs that keep
    their denominators away from zero: test_linear_conservation."""
    if case.absorbs or case.mode == "relu" or rules.stabilizer_of(rule) > 1e-6:
        return False
    return rule.kind in ("pass", "winner", "norm", "gate", "uniform")


def _assert_conserved(got, seed):
    n = got.shape[0]
    r_in, r_out = got.astype(np.float64).reshape(n, -1), np.asarray(seed, np.float64).reshape(n, -1)
    bound = RTOL_LAYER * (np.abs(r_in).sum(axis=1) + np.abs(r_out).sum(axis=1))
    err = np.abs(r_in.sum(axis=1) - r_out.sum(axis=1))
    assert np.all(err <= bound), f"relevance not conserved: lost {err} > {bound}"


def _signed_denominators(rule) -> bool:
    """Whether a weight rule divides by a sum that can cancel: Epsilon's z, and with
    iNNvestigate's options ZPlus on unsplit inputs (W+ x) and AlphaBeta with the whole
    (signed) bias in both sums."""
    return rule.kind == "epsilon" or not getattr(rule, "split_inputs", True) or getattr(rule, "whole_bias", False)


def _division_allowance(graph, case, x, R, rule):
    """Elementwise first-order effect of float32 rounding of z = W x + b on the
    relevance of Epsilon, which divides by z (the other rules divide by sums of
    one sign, or by zp, zn with |zp|, |zn| >= |z| for Gamma). A float32 sum of K
    terms errs by about sqrt(K) 2**-24 S, S = |W| |x| + |b| (random rounding; at
    most K 2**-24 S); we allow four times that. g = R / z then errs by |R| dz / z**2
    and the backward product spreads that as |x| |W|^T (.). Large only at outputs
    whose z nearly cancels, where no float32 backend can do better. The same holds,
    with S as the bound of every sum, for the other denominators that can cancel
    (:func:`_signed_denominators`): ZPlus' W+ x + b+ on unsplit inputs, AlphaBeta's
    sums with the whole bias (weighted by alpha and beta)."""
    node = graph["op"]
    xin = np.maximum(x, 0) if case.mode == "relu" else x
    xin = xin.astype(np.float64)
    W, b = node.params["weight"], node.params.get("bias")
    if node.op == "dense":
        fwd, bwd = (lambda v, M: v @ M.T), (lambda g, M: g @ M)
    else:
        fwd = lambda v, M: conv_forward(v, M, None, node.attrs)  # noqa: E731
        bwd = lambda g, M: conv_backward(g, M, node.attrs, case.in_shape)  # noqa: E731
    bias = 0.0 if b is None or rule.zero_bias else np.reshape(b, (1, -1) + (1,) * (W.ndim - 2))
    xp, xn, Wp, Wn = np.maximum(xin, 0), np.minimum(xin, 0), np.maximum(W, 0), np.minimum(W, 0)
    if rule.kind == "alphabeta":
        sums = [(rule.alpha, fwd(xp, Wp) + fwd(xn, Wn) + bias), (rule.beta, fwd(xp, Wn) + fwd(xn, Wp) + bias)]
    elif rule.kind == "zplus":
        sums = [(1.0, fwd(xin, Wp) + np.maximum(bias, 0))]
    else:
        sums = [(1.0, fwd(xin, W) + bias)]
    S = fwd(np.abs(xin), np.abs(W)) + np.abs(bias)
    K = int(np.prod(W.shape[1:])) + 1
    dg = sum(c * np.abs(R) * 4 * np.sqrt(K) * 2.0**-24 * S / np.maximum(z * z, 1e-30) for c, z in sums)
    return np.abs(xin) * bwd(dg, np.abs(W))


def _graph(op, case, rng):
    gb = GraphBuilder(case.in_shape, input_name="op" if op == "input" else "input")
    h = gb.activation(gb.input, "relu") if case.mode == "relu" else gb.input
    case.build(gb, h, rng)
    return gb.build(output="op")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op,case,rule", list(_matrix()))
def test_op(backend, op, case, rule):
    rng = np.random.default_rng(zlib.crc32(f"{op}-{case.id}".encode()))
    graph = _graph(op, case, rng)
    assert graph[graph.output].op == op
    x = _input(rng, case, (case.batch,) + case.in_shape)
    seed = signed(rng, (case.batch,) + graph.output_shape)
    comp = fastlrp.Composite(names={graph.output: rule})
    ref = fastlrp.Explainer(graph, comp, backend="reference")
    ex = fastlrp.Explainer(graph, comp, backend=backend)

    res = ex.explain_batch(x, target=seed)
    res_ref = ref.explain_batch(x.astype(np.float64), target=seed.astype(np.float64))
    out, out_ref, got, want = res.output, res_ref.output, res.relevance, res_ref.relevance
    assert out.dtype == np.float32 and out.shape == out_ref.shape
    if case.moves:
        np.testing.assert_array_equal(out, out_ref.astype(np.float32))
    else:
        assert rel_err(out, out_ref) < RTOL_FORWARD
    assert got.dtype == np.float32 and got.shape == x.shape
    assert np.all(np.isfinite(got))
    tol = RTOL_ROUTE if rule.kind in ("pass", "winner") else RTOL_LAYER
    err = np.abs(got.astype(np.float64) - want)
    if _signed_denominators(rule) and op in ("dense", "conv"):
        # z = W x + b may nearly cancel at some output of a random layer
        err -= _division_allowance(graph, case, x, seed, rule)
    assert err.max() <= tol * np.abs(want).max(), f"relative error {err.max() / np.abs(want).max():.3g} > {tol}"
    if _conserves(op, case, rule):
        _assert_conserved(got, seed)


def _both_signs(rng, shape):
    """Weights with a positive and a negative entry in every output's row."""
    W = signed(rng, shape).astype(np.float64)
    rows = W.reshape(shape[0], -1)
    rows[:, 0], rows[:, 1] = np.abs(rows[:, 0]), -np.abs(rows[:, 1])
    return W


#: Layers without padding (every output sees every tap) with weights of both signs per output.
CONSERVATION_LAYERS = {
    "dense": ((9,), lambda gb, rng, bias: gb.dense(gb.input, _both_signs(rng, (5, 9)), bias(5))),
    "conv2d": ((3, 6, 7), lambda gb, rng, bias: gb.conv(gb.input, _both_signs(rng, (4, 3, 3, 2)), bias(4),
                                                        stride=(2, 1), dilation=(1, 2))),
    "conv1d-groups": ((4, 11), lambda gb, rng, bias: gb.conv(gb.input, _both_signs(rng, (6, 2, 3)), bias(6), stride=2,
                                                             groups=2)),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layer", sorted(CONSERVATION_LAYERS))
@pytest.mark.parametrize("rule,mode", [
    pytest.param(rule, mode, id=f"{rule}-{mode}")
    for rule in (Epsilon(), ZPlus(), AlphaBeta(2.0, 1.0), AlphaBeta(1.0, 0.0), Gamma(0.25), ZBox(-2.0, 2.5), Flat(),
                 WSquare())
    for mode in ("positive", "signed") if mode == "positive" or rule.kind not in ("zplus", "alphabeta")
])
def test_linear_conservation(backend, layer, rule, mode):
    """The weight rules conserve with zero biases: each output's denominator holds
    exactly what its inputs get. Positive inputs and weights of both signs in every
    row keep ZPlus' and AlphaBeta's sums of one sign away from zero; signed inputs
    do too for the rules without a sign split. ZBox and Flat leave the bias out of
    their denominators, so they conserve with a bias as well. (With signed inputs
    a sign-split sum can be empty, and ZPlus and AlphaBeta then absorb relevance.)"""
    in_shape, build = CONSERVATION_LAYERS[layer]
    rng = np.random.default_rng(zlib.crc32(f"{layer}-{mode}".encode()))
    with_bias = rule.kind in ("zbox", "flat")
    gb = GraphBuilder(in_shape)
    build(gb, rng, lambda n: rng.standard_normal(n) if with_bias else None)
    graph = gb.build()
    x = signed(rng, (3,) + in_shape)
    x = np.abs(x) if mode == "positive" else x
    seed = signed(rng, (3,) + graph.output_shape)
    got = fastlrp.Explainer(graph, fastlrp.Composite({"linear": rule}), backend=backend).explain(x, target=seed)
    _assert_conserved(got, seed)


# ----------------------------------------------------------------------------- single cases on every backend
@pytest.mark.parametrize("backend", BACKENDS)
def test_alphabeta_hand_checked_case(backend):
    """docs/design.md section 2.5: W = (1, -1), b = -1, x = (1, 1), R = z = -1."""
    gb = GraphBuilder((2,))
    gb.dense(gb.input, np.array([[1.0, -1.0]]), np.array([-1.0]))
    graph = gb.build()
    x = np.ones((1, 2), np.float32)
    for rule, want in [(rules.AlphaBeta(1, 0), [-1.0, 0.0]), (rules.AlphaBeta(2, 1), [-2.0, 0.5])]:
        ex = fastlrp.Explainer(graph, fastlrp.Composite({"linear": rule}), backend=backend)
        np.testing.assert_allclose(ex.explain(x, target=0)[0], want, atol=1e-5)
        np.testing.assert_allclose(ex.explain(x[0], target=0), want, atol=1e-5)  # one sample, no batch axis


def _one_dense(W, b=None):
    gb = GraphBuilder((np.shape(W)[1],))
    gb.dense(gb.input, np.asarray(W, np.float64), b, name="fc")
    return gb.build()


@pytest.mark.parametrize("backend", BACKENDS)
def test_stabilizer_sign_of_zero_is_positive(backend):
    """s(0) = +eps: a z that is exactly 0 keeps R's sign."""
    def relevance(rule, x, W, R):
        ex = fastlrp.Explainer(_one_dense(W), fastlrp.Composite({"linear": rule}), backend=backend)
        return ex.explain(np.asarray(x, np.float32), target=np.asarray(R, np.float32))

    # z = 1 - 1 = 0 exactly: R_in = x * W * R / (+0.5) = (2, -2); with s(0) = -eps it would be (-2, 2)
    np.testing.assert_allclose(relevance(Epsilon(0.5), [[1.0, 1.0]], [[1.0, -1.0]], [[1.0]]), [[2.0, -2.0]],
                               rtol=1e-6)
    # W = 0: W^2 1 + b^2 = 0, s(0) = +eps, nothing to share out
    np.testing.assert_array_equal(relevance(WSquare(0.5), [[1.0, 1.0]], np.zeros((1, 2)), [[1.0]]), np.zeros((1, 2)))
    # Flat ignores the weights' values: 3 taps per output, 2 outputs of R = 1
    np.testing.assert_allclose(relevance(Flat(0.0), [[1.0, 1.0, 1.0]], np.zeros((2, 3)), [[1.0, 1.0]]),
                               np.full((1, 3), 2.0 / 3.0), rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_zbox_array_bounds(backend):
    """Per-feature bounds of a dense layer, per-channel bounds (C, 1, 1) of a conv."""
    rng = np.random.default_rng(4)
    graph = _one_dense(rng.standard_normal((3, 6)))
    x = signed(rng, (2, 6))
    rule = ZBox(np.linspace(-2, -1, 6), 1.5)
    got, want = explain_vs_reference(backend, graph, fastlrp.Composite({"linear": rule}), x,
                                     target=signed(rng, (2, 3)))
    assert rel_err(got, want) < RTOL_LAYER
    gb = GraphBuilder((2, 5, 5))
    gb.conv(gb.input, rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3), padding=1)
    graph = gb.build()
    rule = ZBox(np.array([-1.0, -2.0]).reshape(2, 1, 1), np.array([1.5, 0.5]).reshape(2, 1, 1))
    got, want = explain_vs_reference(backend, graph, fastlrp.Composite({"linear": rule}), signed(rng, (2, 2, 5, 5)),
                                     target=signed(rng, (2, 3, 5, 5)))
    assert rel_err(got, want) < RTOL_LAYER


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_sample_and_regression(backend):
    rng = np.random.default_rng(4)
    gb = GraphBuilder((7,))
    h = gb.activation(gb.dense(gb.input, rng.standard_normal((5, 7)), rng.standard_normal(5)), "tanh")
    gb.dense(h, rng.standard_normal((1, 5)), None)
    graph = gb.build()
    x = rng.standard_normal(7).astype(np.float32)
    got, want = explain_vs_reference(backend, graph, "epsilon_plus", x, target=None)
    assert got.shape == (7,)
    assert rel_err(got, want) < RTOL_LAYER


@pytest.mark.parametrize("backend", BACKENDS)
def test_conv_shapes_property(backend):
    """Random conv geometries (1-d and 2-d), every weight rule, signed or ReLU'd input."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    variants = [r for k in rules.PARAMETRIC_RULES for r in RULE_VARIANTS[k]]

    @hypothesis.settings(max_examples=12, deadline=None, derandomize=True)
    @hypothesis.given(
        dims=st.sampled_from([1, 2]), c=st.integers(1, 4), og=st.integers(1, 3), groups=st.integers(1, 3),
        size=st.tuples(st.integers(1, 9), st.integers(1, 13)), k=st.tuples(st.integers(1, 3), st.integers(1, 4)),
        stride=st.tuples(st.integers(1, 3), st.integers(1, 3)), dil=st.tuples(st.integers(1, 2), st.integers(1, 2)),
        pads=st.lists(st.integers(0, 2), min_size=4, max_size=4), bias=st.booleans(), relu=st.booleans(),
        rule=st.sampled_from(variants), seed=st.integers(0, 2**16),
    )
    def check(dims, c, og, groups, size, k, stride, dil, pads, bias, relu, rule, seed):
        sl = slice(2 - dims, 2)
        k, stride, dil, size = k[sl], stride[sl], dil[sl], size[sl]
        pads = ((pads[0], pads[1]), (pads[2], pads[3]))[sl]
        # grow the input until at least one output position exists
        size = tuple(max(s, dil[i] * (k[i] - 1) + 1 - sum(pads[i])) for i, s in enumerate(size))
        assert all(conv_output_length(size[i], k[i], stride[i], pads[i], dil[i]) >= 1 for i in range(dims))
        rng = np.random.default_rng(seed)
        gb = GraphBuilder((c * groups, *size))
        h = gb.activation(gb.input, "relu") if relu else gb.input
        gb.conv(h, rng.standard_normal((og * groups, c, *k)), rng.standard_normal(og * groups) if bias else None,
                stride=stride, padding=pads, dilation=dil, groups=groups)
        graph = gb.build()
        x = signed(rng, (2, c * groups, *size))
        got, want = explain_vs_reference(backend, graph, fastlrp.Composite({"linear": rule}), x,
                                         target=signed(rng, (2,) + graph.output_shape))
        assert rel_err(got, want) < RTOL_LAYER

    check()


# ----------------------------------------------------------------------------- whole networks
NET_COMPOSITES = ["epsilon_plus", "epsilon_plus_flat", "epsilon_alpha2_beta1_flat", "epsilon_gamma_box(low=-3, high=3)",
                  "excitation_backprop"]
NETS = {
    "vgg": (small_vgg, NET_COMPOSITES),
    "resnet": (small_resnet, NET_COMPOSITES),
    "branchy-max": (lambda rng: branchy_cnn(rng, "max"), NET_COMPOSITES),
    "branchy-avg": (lambda rng: branchy_cnn(rng, "avg"), NET_COMPOSITES),
    "cnn1d": (cnn1d, NET_COMPOSITES),
    "structure": (structure_net, ["epsilon_plus", "epsilon_alpha2_beta1_flat"]),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("net,composite", [(n, c) for n, (_, cs) in NETS.items() for c in cs])
def test_whole_networks(backend, net, composite):
    rng = np.random.default_rng(11)
    graph = NETS[net][0](rng)
    x = rng.standard_normal((4,) + graph.input_shape).astype(np.float32)
    ref = fastlrp.Explainer(graph, composite, backend="reference")
    ex = fastlrp.Explainer(graph, composite, backend=backend)
    want = ref.explain(x.astype(np.float64))
    got, report = ex.explain(x, return_layers=True)
    assert got.dtype == np.float32
    assert rel_err(got, want) < RTOL_NET
    # the report's last node receives the explained outputs
    np.testing.assert_allclose(report.relevance_out[report.names[-1]], report.explained, rtol=1e-5)
    if backend != "numba":  # the same float32 arithmetic as the numba backend, to the same bound
        other = fastlrp.Explainer(graph, composite, backend="numba").explain(x)
        assert rel_err(got, other.astype(np.float64)) < RTOL_NET
    # several targets share the forward sums: same as one target at a time
    tg = np.tile(np.arange(3), (4, 1))
    many = ex.explain(x, target=tg)
    assert many.shape == (4, 3) + graph.input_shape
    for k in range(3):
        np.testing.assert_allclose(many[:, k], ex.explain(x, target=k), rtol=0, atol=1e-6 * np.abs(many).max())
