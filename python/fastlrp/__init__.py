"""fastlrp: fast Layer-wise Relevance Propagation with fused CPU and GPU kernels.

Typical use::

    import fastlrp
    graph = fastlrp.from_torch(model, example_input)
    explainer = fastlrp.Explainer(graph, "epsilon_plus_flat")
    relevance = explainer.explain(x, target=None)   # arg-max class of each sample
"""

from __future__ import annotations

# The one place the version is written: pyproject.toml reads it from here
# ([tool.scikit-build.metadata.version]), so the package metadata agrees.
__version__ = "0.1.0"

from . import composites, heatmap, innvestigate, ops, passes, rules  # noqa: F401 - innvestigate registers the lrp.* composites
from .composites import Composite, get_composite, register_composite
from .explain import Explainer, InputError, RelevanceReport, get_backend
from .errors import GraphFileError, UnsupportedLayerError
from .graph import Graph, GraphBuilder, GraphError, Node
from .rules import RuleError

__all__ = [
    "__version__",
    "Composite",
    "Explainer",
    "Graph",
    "GraphBuilder",
    "GraphError",
    "GraphFileError",
    "InputError",
    "Node",
    "RelevanceReport",
    "RuleError",
    "UnsupportedLayerError",
    "composites",
    "explain_dataset",
    "ops",
    "passes",
    "from_keras",
    "from_torch",
    "get_backend",
    "get_composite",
    "heatmap",
    "register_composite",
    "rules",
    "max_threads",
    "set_num_threads",
    "verify_store",
]


def set_num_threads(n: int) -> None:
    """Threads for the compiled CPU kernels (OpenMP) and the Numba kernels.

    By default both follow the environment: ``OMP_NUM_THREADS`` for the compiled
    backend, ``NUMBA_NUM_THREADS`` for Numba (else all cores). NumPy's BLAS, used by
    the Numba backend for its GEMMs, follows ``OPENBLAS_NUM_THREADS``.
    """
    import operator
    import os
    import sys

    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"set_num_threads needs a whole number of threads, got {n!r}") from None
    limit = max_threads()
    if not 1 <= n <= limit:
        raise ValueError(f"set_num_threads needs 1 <= n <= {limit} (8 threads per CPU core of this machine, "
                         f"{os.cpu_count()} cores, at least 64), got {n}")
    from . import _ext

    if _ext.core is not None:
        _ext.core.set_num_threads(n)
    if "numba" in sys.modules or _ext.core is None:
        try:
            import numba
        except ImportError:
            return
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def max_threads() -> int:
    """The most threads :func:`set_num_threads` accepts: 8 per CPU core, at least 64
    and at most 1024 (far more threads than cores only slows the kernels down, and
    thread creation fails, ending the process, long before the OS's limit)."""
    import os

    return min(1024, max(64, 8 * (os.cpu_count() or 1)))


def explain_dataset(explainer, source, out, **kwargs):
    """Explain a whole dataset into a resumable store (see :func:`fastlrp.dataset.explain_dataset`)."""
    from .dataset import explain_dataset as _explain_dataset

    return _explain_dataset(explainer, source, out, **kwargs)


def verify_store(path, source=None, **kwargs):
    """Check a relevance store end to end (see :func:`fastlrp.dataset.verify_store`)."""
    from .dataset import verify_store as _verify_store

    return _verify_store(path, source, **kwargs)


def from_torch(module, example_input=None, **kwargs) -> Graph:
    """Import a PyTorch ``nn.Module`` (through torch.fx), a ``torch.export.ExportedProgram``
    or a TorchScript module (see :mod:`fastlrp.importers.torch`). ``example_input`` is
    required for modules and optional for exported programs."""
    from .importers.torch import from_torch as _from_torch

    return _from_torch(module, example_input, **kwargs)


def from_keras(model, **kwargs) -> Graph:
    """Import a Keras 3 model or a ``.keras``/``.h5`` file (see :mod:`fastlrp.importers.keras`)."""
    from .importers.keras import from_keras as _from_keras

    return _from_keras(model, **kwargs)
