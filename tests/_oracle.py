"""An independent formulation of the rules, the check of the float64 reference
backend itself (test_reference.py): every dense or conv layer is written as an
explicit dense matrix (built by plain loops over output positions and kernel
taps), and the rules are applied to that matrix straight from their definitions
in docs/design.md section 2. Nothing here calls fastlrp's backends. (The float32
backends are compared with the reference: test_backend_matrix.py.)"""

from __future__ import annotations

import itertools

import numpy as np


def conv_matrix(W, in_shape, stride, padding, dilation, groups):
    """(M, mask, out_shape): M[o_flat, i_flat] = the weight linking them, mask = 1
    where a kernel tap links them (also where the weight is 0)."""
    d = W.ndim - 2
    C = in_shape[0]
    O = W.shape[0]
    Cg, Og = C // groups, O // groups
    spatial = in_shape[1:]
    out_sp = [
        (spatial[i] + padding[i][0] + padding[i][1] - dilation[i] * (W.shape[2 + i] - 1) - 1) // stride[i] + 1
        for i in range(d)
    ]
    n_in = int(np.prod(in_shape))
    out_shape = (O, *out_sp)
    M = np.zeros((int(np.prod(out_shape)), n_in))
    mask = np.zeros_like(M)
    for o in range(O):
        g = o // Og
        for opos in itertools.product(*[range(s) for s in out_sp]):
            row = np.ravel_multi_index((o, *opos), out_shape)
            for c in range(Cg):
                cin = g * Cg + c
                for k in itertools.product(*[range(s) for s in W.shape[2:]]):
                    ipos = [opos[i] * stride[i] - padding[i][0] + k[i] * dilation[i] for i in range(d)]
                    if all(0 <= ipos[i] < spatial[i] for i in range(d)):
                        col = np.ravel_multi_index((cin, *ipos), in_shape)
                        M[row, col] = W[(o, c, *k)]
                        mask[row, col] = 1.0
    return M, mask, out_shape


def stab(z, eps):
    return z + np.where(z >= 0, eps, -eps)


def rule_on_matrix(kind, M, mask, bias, x, R, **p):
    """Apply a rule to z = M x + bias for a batch x (N, in), R (N, out)."""
    pos, neg = (lambda a: np.maximum(a, 0)), (lambda a: np.minimum(a, 0))
    b = np.zeros(M.shape[0]) if bias is None or p.get("zero_bias") else bias
    xp, xn, Mp, Mn = pos(x), neg(x), pos(M), neg(M)
    if kind == "epsilon":
        return x * ((R / stab(x @ M.T + b, p["epsilon"])) @ M)
    if kind == "zplus":
        g = R / stab(xp @ Mp.T + xn @ Mn.T + pos(b), p["stabilizer"])
        return xp * (g @ Mp) + xn * (g @ Mn)
    if kind == "alphabeta":
        ga = R / stab(xp @ Mp.T + xn @ Mn.T + pos(b), p["stabilizer"])
        gb = R / stab(xp @ Mn.T + xn @ Mp.T + neg(b), p["stabilizer"])
        return p["alpha"] * (xp * (ga @ Mp) + xn * (ga @ Mn)) - p["beta"] * (xp * (gb @ Mn) + xn * (gb @ Mp))
    if kind == "gamma":
        gm = p["gamma"]
        Mu, Md = M + gm * Mp, M + gm * Mn
        bu, bd = b + gm * pos(b), b + gm * neg(b)
        z = x @ M.T + b
        gp = (z > 0) * R / stab(xp @ Mu.T + xn @ Md.T + bu, p["stabilizer"])
        gn = (z < 0) * R / stab(xp @ Md.T + xn @ Mu.T + bd, p["stabilizer"])
        return xp * (gp @ Mu) + xn * (gp @ Md) + xp * (gn @ Md) + xn * (gn @ Mu)
    if kind == "zbox":
        lo, hi = p["low"], p["high"]
        g = R / stab(x @ M.T - lo @ Mp.T - hi @ Mn.T, p["stabilizer"])
        return x * (g @ M) - lo * (g @ Mp) - hi * (g @ Mn)
    if kind == "flat":
        return (R / stab(np.ones_like(x) @ mask.T, p["stabilizer"])) @ mask
    if kind == "wsquare":
        M2 = M * M
        return (R / stab(np.ones_like(x) @ M2.T + b * b, p["stabilizer"])) @ M2
    raise ValueError(kind)
