"""The model zoos (torchvision, timm, keras.applications) for tests/test_zoo.py.

torchvision's wheels on PyPI are CUDA builds. Installed with ``pip install --no-deps``
beside the CPU build of torch (so that pip does not replace torch), their compiled
extension does not load, and ``import torchvision`` then fails in its Python-side
registrations with "operator torchvision::nms does not exist". The models need none
of those compiled ops: :func:`load_torchvision` declares the two schemas the import
looks up (``torchvision::nms`` and ``torchvision::qnms``, no kernels) and imports
again. Ops that need the compiled kernels (nms, roi_align, ...) still fail when run.
A torchvision whose extension loads (a CPU build) is imported as it is. ``load_*`` need
no pytest (for scripts such as the benchmarks); ``import_*`` skip the calling test.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import numpy as np

#: The torch.library.Library holding the declared schemas; it must stay alive, as a
#: Library removes its registrations when it is garbage collected.
_SCHEMAS = []


def _declare_torchvision_schemas(torch):
    lib = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _SCHEMAS.append(lib)


def load_torchvision():
    """Import torchvision (declaring its nms schemas when a CUDA build sits beside CPU
    torch); ImportError with the reason when it cannot be imported."""
    import torch

    loaded = sys.modules.get("torchvision")
    if loaded is not None and getattr(loaded, "__spec__", None) is None:
        # tests/_zennit_compat.py's stand-in (zennit imports torchvision): no real one here
        raise ImportError("torchvision is not installed (a stand-in for zennit's import is loaded)")
    if loaded is None and importlib.util.find_spec("torchvision") is None:
        raise ImportError("torchvision is not installed (pip install --no-deps 'torchvision==<the match of torch>')")
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as e:
        if "torchvision::nms does not exist" not in str(e) or _SCHEMAS:
            raise ImportError(f"torchvision does not import: {e}") from e
    # The failed import left the submodules it had loaded; start again from nothing.
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    _declare_torchvision_schemas(torch)
    try:
        return importlib.import_module("torchvision")
    except Exception as e:  # noqa: BLE001 - any failure is the reason reported
        raise ImportError(f"torchvision does not import even with its nms schemas declared: "
                          f"{type(e).__name__}: {e}") from e


def load_timm():
    """Import timm (after torchvision, which it imports); ImportError with the reason."""
    load_torchvision()
    if importlib.util.find_spec("timm") is None:
        raise ImportError("timm is not installed (pip install --no-deps timm)")
    try:
        return importlib.import_module("timm")
    except Exception as e:  # noqa: BLE001 - any failure is the reason reported
        raise ImportError(f"timm does not import: {type(e).__name__}: {e}") from e


def import_torchvision():
    """torchvision, or skip the test with the reason it cannot be imported."""
    import pytest

    pytest.importorskip("torch")
    try:
        return load_torchvision()
    except ImportError as e:
        pytest.skip(str(e))


def import_timm():
    """timm, or skip the test with the reason it cannot be imported."""
    import pytest

    pytest.importorskip("torch")
    try:
        return load_timm()
    except ImportError as e:
        pytest.skip(str(e))


# ----------------------------------------------------------------------------- random weights
def randomize_torch_batchnorm(model, seed=0):
    """Non-trivial BatchNorm statistics and affine parameters (freshly built models have
    mean 0, variance 1, weight 1, bias 0: an identity that would test nothing), mild
    enough that deep networks keep activations of order one, and random weights for
    Linear layers initialised to zero. Returns the model in eval mode."""
    import torch

    batchnorms = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)  # timm's subclass them
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, batchnorms) and m.running_mean is not None:
                c = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.75 + 0.5 * torch.rand(c, generator=g))
                if m.affine:
                    m.weight.copy_(0.75 + 0.5 * torch.rand(c, generator=g))
                    m.bias.copy_(0.1 * torch.randn(c, generator=g))
            elif isinstance(m, torch.nn.Linear) and not m.weight.any():
                # zero-initialised classifier heads (torchvision's ViTs): a zero output tests nothing
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / m.in_features ** 0.5)
    return model.eval()


def randomize_keras(model, seed=0):
    """Random weights for a freshly built keras.applications model: small non-zero biases,
    random BatchNorm statistics, scales and shifts, and depthwise kernels rescaled to the
    number of inputs they sum (kh * kw; Keras' Glorot initialisation counts kh * kw * channels,
    which makes MobileNet's logits vanish to ~1e-22). Other kernels keep Keras' Glorot
    initialisation: with He-scaled kernels, or BatchNorm statistics measured on data, the
    residual streams of Xception and ResNet50V2 centre on zero, their adds cancel and the
    float32 relevance of the epsilon-type add rule loses its precision (errors of 5-20 %
    against float64), which would test the conditioning of those weights, not the engine.
    Weights it does not know (Normalization's mean and variance, counters) are left as
    they are."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        shape = tuple(int(s) for s in w.shape)
        leaf = w.path.rsplit("/", 1)[-1]
        if leaf == "depthwise_kernel":  # (kh, kw, channels, multiplier)
            v = rng.standard_normal(shape) * np.sqrt(2.0 / (shape[0] * shape[1]))
        elif leaf in ("bias", "beta", "moving_mean"):
            v = 0.1 * rng.standard_normal(shape)
        elif leaf == "gamma":
            v = 1.0 + 0.1 * rng.standard_normal(shape)
        elif leaf == "moving_variance":
            v = 0.75 + 0.5 * rng.uniform(size=shape)
        else:
            continue
        w.assign(v.astype(w.dtype))
    return model


# ----------------------------------------------------------------------------- Keras applications
def keras_application(keras, name, size):
    """``keras.applications.<name>`` with random weights for (size, size, 3) inputs and logits out."""
    make = getattr(keras.applications, name)
    keras.utils.set_random_seed(0)  # Keras' own initialisers draw from its global generator
    return randomize_keras(make(weights=None, input_shape=(size, size, 3), classifier_activation=None))


def keras_input(size, n=2, seed=0):
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n, size, size, 3)).astype(np.float32)


def import_keras_application_on_jax(name, size, out_dir, timeout):
    """Build ``keras.applications.<name>`` on the jax backend in a subprocess (for models
    Keras builds on no other backend), import it there with ``fastlrp.from_keras`` and
    return (graph, x, Keras' output for x). An unsupported layer is raised here as the
    ``UnsupportedLayerError`` the importer raised there."""
    import subprocess
    from pathlib import Path

    import fastlrp

    out = Path(out_dir)
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    proc = subprocess.run([sys.executable, __file__, name, str(size), str(out)], env=env, timeout=timeout,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building {name} on the jax backend failed:\n{proc.stderr[-3000:]}")
    if (out / "unsupported.txt").exists():
        raise fastlrp.UnsupportedLayerError((out / "unsupported.txt").read_text())
    io = np.load(out / "io.npz")
    return fastlrp.Graph.load(out / "graph.npz"), io["x"], io["y"]


def _main(name, size, out):
    """The subprocess of :func:`import_keras_application_on_jax` (KERAS_BACKEND set by the caller)."""
    import warnings
    from pathlib import Path

    import keras

    import fastlrp

    out = Path(out)
    model = keras_application(keras, name, size)
    x = keras_input(size)
    y = np.asarray(model.predict(x, verbose=0), dtype=np.float32)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="BatchNorm .* could not be folded")
            graph = fastlrp.from_keras(model)
    except fastlrp.UnsupportedLayerError as e:
        (out / "unsupported.txt").write_text(str(e))
        return
    graph.save(out / "graph.npz")
    np.savez(out / "io.npz", x=x, y=y)


if __name__ == "__main__":
    _main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
