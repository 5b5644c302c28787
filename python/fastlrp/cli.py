"""The command line: ``fastlrp COMMAND`` (also ``python -m fastlrp`` and ``python -m fastlrp.cli``).

Commands are argparse subcommands registered in :data:`COMMANDS` (``info``,
``explain``, ``verify``, ``heatmap``, ``demo``, ``bench``): each adds its arguments and sets
``handler``, a function of the parsed arguments returning the exit code.
:func:`add_commands` adds them to any argparse sub-parser object;
:func:`build_parser` and :func:`main` are the ``fastlrp`` program.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import subprocess
import sys
import warnings
from typing import Optional, Sequence

import numpy as np

from .targets import InputError

__all__ = ["COMMANDS", "add_commands", "build_parser", "load_model", "main", "run_demo"]


# ------------------------------------------------------------------------------------------
# info


def _version() -> str:
    try:
        import fastlrp

        return fastlrp.__version__
    except Exception:
        pass
    try:
        from importlib.metadata import version

        return version("fastlrp")
    except Exception:
        return "unknown"


def _backend_lines() -> list[str]:
    from . import _ext

    lines = ["  reference : usable (float64 NumPy)"]
    if _ext.core is not None:
        info = _ext.core.build_info()
        feats = ", ".join(k for k, v in info.get("cpu_features", {}).items() if v) or "none"
        lines.append(
            f"  cpu       : usable (fastlrp._core; {info['compiler']}; "
            f"OpenMP {'yes' if info['openmp'] else 'no'}; threads {info['num_threads']}; "
            f"SIMD paths {', '.join(info['simd_paths'])}; CPU features {feats})"
        )
        if hasattr(_ext.core, "bf16_unavailable"):
            why = _ext.core.bf16_unavailable()
            lines.append("  cpu bf16  : " + (f"usable (precision='bf16': {_ext.core.bf16_kernel()})" if not why
                                             else f"not available ({why})"))
    else:
        lines.append(f"  cpu       : not available ({_ext.core_error})")
    try:
        numba = importlib.import_module("numba")
        lines.append(f"  numba     : numba {numba.__version__} importable")
    except Exception as e:
        lines.append(f"  numba     : not importable ({type(e).__name__}: {e})")
    if _ext.cuda is None:
        lines.append(f"  cuda      : not built ({_ext.cuda_error})")
    elif _ext.cuda_available():
        lines.append(
            f"  cuda      : usable (fastlrp._cuda, CUDA runtime {_ext.cuda.runtime_version()}, "
            f"{_ext.cuda.device_count()} device(s))"
        )
    else:
        lines.append(
            f"  cuda      : built (CUDA runtime {_ext.cuda.runtime_version()}), no usable GPU "
            f"({_ext.cuda_unavailable_reason()})"
        )
    emu, why = _ext.cuda_emu()
    if emu is not None:
        lines.append("  cuda-emu  : usable (the CUDA kernels on a CPU SIMT emulator; for tests, slow)")
    else:
        lines.append(f"  cuda-emu  : not built ({why})")
    return lines


def _kernel_lines() -> list[str]:
    """Per backend: the ops (and rules) run by its own kernels; the rest run the one fallback."""
    from . import ops
    from .backends import dispatch

    lines = ["kernels (every other op or rule runs the fallback: the op's NumPy reference on float32 arrays;"
             " on cuda with a host round trip):"]
    for family, module in (("cpu", "cpu"), ("numba", "numba_backend"), ("cuda", "cuda")):
        try:
            importlib.import_module(f"fastlrp.backends.{module}")  # registers its kernels
        except Exception as e:  # noqa: BLE001 - e.g. numba missing
            lines.append(f"  {family:<9} : kernels not loadable ({type(e).__name__}: {e})")
            continue
        cov = dispatch.coverage(family)
        parts = []
        for op, (kinds, variants) in cov.items():
            what = [] if kinds == tuple(ops.spec(op).rules) else [", ".join(kinds)]
            what += [variants] if variants else []
            parts.append(f"{op} ({'; '.join(what)})" if what else op)
        rest = [op for op in ops.names() if op not in cov]
        lines.append(f"  {family:<9} : {'; '.join(parts) or 'none'}")
        lines.append(f"  {'':<9}   fallback: {', '.join(rest) or 'none'}")
    return lines


def cmd_info(args: argparse.Namespace) -> int:
    print(f"fastlrp {_version()}")
    print(f"python  {platform.python_version()} ({sys.executable})")
    print(f"numpy   {np.__version__}")
    print("backends:")
    for line in _backend_lines() + _kernel_lines():
        print(line)
    return 0


# ------------------------------------------------------------------------------------------
# model files


def load_model(path: str, example=None, keep_output_activation: bool = False):
    """Load a model file as a fastlrp :class:`~fastlrp.graph.Graph`.

    - ``.npz``: a fastlrp graph (:meth:`Graph.save`), NumPy only;
    - ``.keras`` / ``.h5`` / ``.hdf5``: a Keras model via :func:`fastlrp.from_keras`;
    - ``.pt2``: a ``torch.export`` program (``torch.export.save``);
    - ``.pt`` / ``.pth`` / ``.ts`` / ``.jit``: a TorchScript module (``torch.jit.save``)
      (or a torch.export archive with that suffix).

    PyTorch model files are converted with :func:`fastlrp.from_torch` from their ATen
    graph (TorchScript through torch's TorchScript-to-export converter), with no need
    for the model's Python code; ``example`` is one input batch used to learn the shapes
    (a torch.export archive brings its own).
    """
    from .graph import Graph

    if not os.path.exists(path):
        raise FileNotFoundError(f"model file not found: {path}")
    low = path.lower()
    if low.endswith(".npz"):
        return Graph.load(path)
    if low.endswith((".keras", ".h5", ".hdf5")):
        import fastlrp

        return fastlrp.from_keras(path)
    if low.endswith((".pt2", ".pt", ".pth", ".ts", ".jit", ".torchscript")):
        return _load_torch(path, example, keep_output_activation)
    raise ValueError(f"unknown model file type: {path} (fastlrp graph .npz, Keras .keras/.h5, "
                     "torch.export .pt2, TorchScript .pt)")


CHECKPOINT_ADVICE = (
    "fastlrp needs a model program, and a torch.save checkpoint (a state_dict or a pickled module) holds only "
    "weights or objects whose code lives in your project. In Python, rebuild the model, load the weights and "
    "convert it once: model.load_state_dict(torch.load(path)); fastlrp.from_torch(model.eval(), x).save('m.npz'), "
    "then pass m.npz (or save a program: torch.export.save(torch.export.export(model.eval(), (x,)), 'm.pt2'))")


def torch_file_kind(path: str) -> str:
    """What a PyTorch file holds, from its archive listing alone (no unpickling):
    ``"export"`` (torch.export.save), ``"torchscript"`` (torch.jit.save),
    ``"checkpoint"`` (torch.save of a state_dict or a module) or ``"unknown"``."""
    import zipfile

    try:
        with open(path, "rb") as f:
            if not zipfile.is_zipfile(f):
                f.seek(0)
                return "checkpoint" if f.read(2)[:1] == b"\x80" else "unknown"  # a legacy pickle
            f.seek(0)
            names = zipfile.ZipFile(f).namelist()
    except (OSError, zipfile.BadZipFile):
        return "unknown"
    parts = {p for n in names for p in n.split("/")[1:-1]}
    if "models" in parts or any(n.endswith("archive_format") for n in names):
        return "export"
    if "code" in parts or any(n.endswith("constants.pkl") for n in names):
        return "torchscript"
    return "checkpoint" if any(n.endswith("data.pkl") for n in names) else "unknown"


def _load_torch(path, example, keep_output_activation):
    kind = torch_file_kind(path)
    if kind == "checkpoint":
        raise ValueError(f"{path} is a torch.save checkpoint, not a model program. {CHECKPOINT_ADVICE}")
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"loading {path} needs PyTorch (pip install 'fastlrp[torch]')") from e
    import fastlrp.importers.torch as _ti

    def load_export():
        return torch.export.load(path)

    def load_script():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated in recent torch
            return torch.jit.load(path, map_location="cpu")

    loaders = [("torch.export", load_export), ("TorchScript", load_script)]
    if kind == "torchscript" or (kind == "unknown" and not path.lower().endswith(".pt2")):
        loaders.reverse()
    model, how, errors = None, None, []
    for name, fn in loaders:
        try:
            model = fn()
            how = name
            break
        except Exception as e:  # noqa: BLE001 - try the other format
            errors.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    if model is None:
        raise ValueError(f"{path} is neither a torch.export archive (torch.export.save) nor a TorchScript module "
                         f"(torch.jit.save); a pickled model (torch.save(model)) needs its defining code: convert it "
                         f"in Python with fastlrp.from_torch(model, x).save('model.npz'). Details: {'; '.join(errors)}")
    if how == "torch.export" and getattr(model, "example_inputs", None):
        x = None  # the export's own example: shapes guarded by the program match it
    elif example is not None:
        x = torch.from_numpy(np.array(example[:1]))  # a writable copy; the importer casts it to the model's dtype
    else:
        raise ValueError(f"converting the {how} model {path} needs an example input (the data's first batch)")
    try:
        return _ti.from_torch(model, x, keep_output_activation=keep_output_activation,
                              name=os.path.splitext(os.path.basename(path))[0])
    except Exception as e:  # noqa: BLE001
        hint = {
            "TorchScript": "save the model with torch.export.save(torch.export.export(model.eval(), (x,)), 'm.pt2') "
                           "instead, or convert the original model in Python: fastlrp.from_torch(model, x)"
                           ".save('m.npz'), and pass that file",
            "torch.export": "convert the original model in Python instead: fastlrp.from_torch(model, x)"
                            ".save('m.npz'), and pass the .npz",
        }[how]
        raise ValueError(f"the {how} model in {path} could not be converted by fastlrp.from_torch: "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. {hint}") from e


def _parse_target(text: Optional[str], n: Optional[int]):
    """``--target``: an int, a comma list (the same K outputs for every sample), a
    .npy file of per-sample targets, or a word that :func:`fastlrp.targets.parse_target`
    reads (none/argmax/pred, all, label)."""
    if text is None:
        return None
    t = text.strip()
    if t.lower().endswith(".npy") and os.path.exists(t):
        return np.load(t, allow_pickle=False)
    try:
        ks = [int(v) for v in t.split(",") if v.strip()]
    except ValueError:
        return t  # a word, or what parse_target reports as not understood
    if "," not in t:
        return ks[0] if ks else t
    if n is None:
        raise InputError("a list of targets needs the number of samples (an array data file)")
    return np.tile(np.asarray(ks, dtype=np.int64), (n, 1))


# ------------------------------------------------------------------------------------------
# commands


def _add_explain(p: argparse.ArgumentParser):
    p.add_argument("model", help="model file: fastlrp graph .npz, Keras .keras/.h5, torch.export .pt2, TorchScript .pt")
    p.add_argument("data", help="data file: .npy (memory-mapped), .npz, .zarr, .h5/.hdf5")
    p.add_argument("-o", "--out", required=True, help="output store: a zarr directory, or a .npy file")
    p.add_argument("--key", help="array name inside an .npz / zarr group / HDF5 file (default: x or the only one)")
    p.add_argument("-c", "--composite", default="epsilon_plus_flat",
                   help="composite name, e.g. epsilon_plus, epsilon_alpha2_beta1_flat, 'epsilon_gamma_box(low=-3,high=3)'"
                        " (default: %(default)s)")
    p.add_argument("-t", "--target", default=None,
                   help="none (arg-max, default), an int, a comma list (several per sample), all, or a .npy of targets")
    p.add_argument("-b", "--batch-size", type=int, default=None, help="default: from --memory-budget")
    p.add_argument("--chunk-size", type=int, default=None, help="samples per stored chunk (the unit of resuming)")
    p.add_argument("--memory-budget", default=None, help="e.g. 2GB (default: a quarter of the RAM, at most 2 GiB)")
    p.add_argument("--backend", default="auto", help="auto, cpu, numba, cuda, reference (default: auto)")
    p.add_argument("--precision", default="float32", choices=("float32", "bf16"),
                   help="bf16: the cpu backend's bfloat16 products, float32 sums (docs/precision.md; "
                        "default: %(default)s)")
    p.add_argument("--nonfinite", choices=("skip", "raise"), default="skip",
                   help="samples with NaN/Inf: skip (NaN relevance, valid=0) or raise (default: skip)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store instead of resuming it")
    p.add_argument("--save-graph", help="also save the imported model as a fastlrp graph .npz")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def cmd_explain(args) -> int:
    from .dataset import explain_dataset, open_source
    from .explain import Explainer

    src = open_source(args.data, key=args.key)
    try:
        example = src.read(0, 1) if getattr(src, "random_access", False) else None
        graph = load_model(args.model, example)
        if args.save_graph:
            _ensure_parent(args.save_graph, "explain")
            graph.save(args.save_graph)
        ex = Explainer(graph, args.composite, backend=args.backend, precision=args.precision)
        target = _parse_target(args.target, getattr(src, "n", None))
        _ensure_parent(args.out, "explain")
        res = explain_dataset(ex, src, args.out, target=target, batch_size=args.batch_size,
                              chunk_size=args.chunk_size, memory_budget=args.memory_budget,
                              nonfinite=args.nonfinite, overwrite=args.overwrite, quiet=args.quiet)
    except KeyboardInterrupt:
        print(f"fastlrp explain: interrupted; {args.out} keeps the finished chunks: run the same command again "
              "to resume", file=sys.stderr)
        return 130
    finally:
        src.close()
    print(f"{res.path}: {res.n_samples} samples, {res.computed} explained now ({res.reused_chunks} chunks were "
          f"done already) in {res.seconds:.2f} s ({res.samples_per_s:.1f} samples/s); "
          f"{len(res.nonfinite)} skipped for NaN/Inf")
    return 0


def _add_heatmap(p: argparse.ArgumentParser):
    p.add_argument("relevance", help="a relevance store (zarr directory or .npy) or a .npy array (N, ...)")
    p.add_argument("-o", "--out", required=True, help="PNG file to write")
    p.add_argument("-s", "--samples", default="0:64", help="samples to show: 'a:b' or a comma list (default: 0:64)")
    p.add_argument("-k", "--target-index", type=int, default=0, help="which target of a multi-target store")
    p.add_argument("--cmap", default="bwr", help="bwr, coldnhot, seismic, gray, hot, cold, wred, wblue, france, ...")
    p.add_argument("--level", type=float, default=1.0, help="colour-map level (zennit's; default 1)")
    p.add_argument("--unsymmetric", action="store_true", help="min-max normalisation instead of symmetric")
    p.add_argument("--shared-norm", action="store_true", help="one normalisation for all samples")
    p.add_argument("--scale", type=int, default=None, help="enlarge each map (default: to about 64 pixels)")
    p.add_argument("--ncols", type=int, default=None)
    p.add_argument("--input", help="the input data file, to show under (or beside, --side-by-side) the heatmaps")
    p.add_argument("--key", help="array name in the --input file")
    p.add_argument("--side-by-side", action="store_true")
    p.add_argument("--labels", action="store_true",
                   help="write each sample's index above its heatmap, with the explained (t=) and predicted (p=, "
                        "the arg-max output) class when the relevance is a store")
    p.add_argument("--colorbar", action="store_true",
                   help="add a colour bar with the value range (numbers with --shared-norm, else -max..+max of "
                        "each panel)")


def _parse_samples(text: str, n: int) -> np.ndarray:
    try:
        if ":" in text:
            a, _, b = text.partition(":")
            return np.arange(n)[slice(int(a) if a else None, int(b) if b else None)]
        return np.array([int(v) for v in text.split(",") if v.strip()], dtype=np.int64)
    except ValueError:
        raise ValueError(f"--samples must be a range 'a:b' or a comma list of sample indices, got {text!r}") from None


def cmd_heatmap(args) -> int:
    from . import heatmap as hm
    from .dataset import load_store, open_source

    path = args.relevance
    store = None
    if path.lower().endswith(".npy") and not os.path.exists(path[:-4] + ".json"):
        rel = np.load(path, mmap_mode="r")
        multi = False
    else:
        store = load_store(path)
        rel = store["relevance"]
        multi = bool(store["meta"].get("multi_target"))
    idx = _parse_samples(args.samples, rel.shape[0])
    if idx.size == 0:
        raise ValueError("no samples selected")
    if idx.max() >= rel.shape[0] or idx.min() < 0:
        raise ValueError(f"sample index out of range: the store has {rel.shape[0]} samples")
    n_targets = rel.shape[1] if multi else 1
    if not 0 <= args.target_index < n_targets:
        raise ValueError(f"--target-index {args.target_index} is out of range: {path} holds "
                         + (f"{n_targets} targets per sample (use 0..{n_targets - 1})" if multi
                            else "one target per sample (leave -k/--target-index at 0)"))
    R = np.stack([np.asarray(rel[int(i)]) for i in idx])
    if multi:
        R = R[:, args.target_index]
    images = None
    if args.input:
        src = open_source(args.input, key=args.key)
        images = np.stack([src.read(int(i), int(i) + 1)[0] for i in idx])
        src.close()
    h = hm.reduce_channels(R[0]).shape
    scale = args.scale if args.scale else max(1, 64 // max(h))
    labels = None
    if args.labels:
        labels = [f"#{i}" for i in idx] if store is None else hm.store_labels(store, idx, args.target_index)
    grid = hm.heatmap_grid(R, images=images, ncols=args.ncols, cmap=args.cmap, level=args.level,
                           symmetric=not args.unsymmetric, shared_norm=args.shared_norm, scale=scale,
                           side_by_side=args.side_by_side, labels=labels, colorbar=args.colorbar)
    _ensure_parent(args.out, "heatmap")
    hm.save_png(grid, args.out)
    print(f"wrote {args.out} ({grid.shape[1]}x{grid.shape[0]} pixels, {len(idx)} heatmaps)")
    return 0


def _add_demo(p: argparse.ArgumentParser):
    p.add_argument("--out", default="fastlrp-demo", help="output directory (default: ./fastlrp-demo)")
    p.add_argument("-c", "--composite", default="epsilon_plus", help="composite (default: %(default)s)")
    p.add_argument("--backend", default="auto", help="auto, cpu, numba, cuda, reference (default: auto)")
    p.add_argument("-b", "--batch-size", type=int, default=None)
    p.add_argument("--cmap", default="bwr")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def demo_files() -> tuple:
    """Paths of the demo dataset and model shipped in ``fastlrp/data``."""
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
    return os.path.join(here, "digits.npz"), os.path.join(here, "digits_cnn.npz")


def run_demo(out: str = "fastlrp-demo", composite: str = "epsilon_plus", backend: str = "auto",
             batch_size: Optional[int] = None, quiet: bool = False, cmap: str = "bwr") -> dict:
    """The built-in demo: explain all 1797 handwritten digits with the shipped CNN,
    write the relevance store and a heatmap grid, print throughput and conservation."""
    from . import heatmap as hm
    from .dataset import explain_dataset, load_store
    from .explain import Explainer
    from .graph import Graph

    data_path, model_path = demo_files()
    with np.load(data_path) as z:
        images, labels = z["images"], z["labels"].astype(np.int64)
    graph = Graph.load(model_path)
    x = (images[:, None].astype(np.float32) * np.float32(graph.meta.get("input_scale", 1 / 16)))
    os.makedirs(out, exist_ok=True)
    ex = Explainer(graph, composite, backend=backend)
    try:
        import zarr  # noqa: F401

        store_path = os.path.join(out, "relevance.zarr")
    except ImportError:
        store_path = os.path.join(out, "relevance.npy")
    print(f"fastlrp demo: {len(x)} handwritten digits (8x8, scikit-learn / UCI), model {graph.meta.get('name')} "
          f"({sum(n.params['weight'].size for n in graph.parametric())} weights), composite {ex.composite.name}, "
          f"backend {getattr(ex.backend, 'name', '?')}")
    res = explain_dataset(ex, x, store_path, target=None, batch_size=batch_size, overwrite=True, quiet=quiet)
    st = load_store(store_path)
    R = np.asarray(st["relevance"][:])
    O = np.asarray(st["output"][:])
    T = np.asarray(st["target"][:])
    logit = O[np.arange(len(O)), T]
    rsum = R.reshape(len(R), -1).sum(axis=1)
    acc = float((T == labels).mean())
    ratio = rsum / logit
    print(f"explained {res.n_samples} samples in {res.seconds:.2f} s: {res.samples_per_s:.0f} samples/s")
    print(f"predicted class = label for {acc * 100:.1f}% of the samples")
    print("conservation (sum of input relevance vs the explained logit, per sample):")
    print(f"  sum R / logit: median {np.median(ratio):.4f}, 5%..95% {np.percentile(ratio, 5):.4f}.."
          f"{np.percentile(ratio, 95):.4f}; max |sum R - logit| {np.abs(rsum - logit).max():.3g} "
          f"(biases and stabilisers absorb the rest)")
    # grid: 4 examples of each digit, input beside its heatmap
    picks = np.concatenate([np.flatnonzero(labels == d)[:4] for d in range(10)])
    picks = picks.reshape(10, 4).T.reshape(-1)  # rows of 0..9
    names = [f"#{i} y={labels[i]} p={T[i]}" for i in picks]
    grid = hm.heatmap_grid(R[picks], images=x[picks], ncols=10, scale=8, side_by_side=True, cmap=cmap, pad=4,
                           labels=names, colorbar=True)
    png = os.path.join(out, "heatmaps.png")
    hm.save_png(grid, png)
    print(f"wrote {store_path} (relevance, output, target, valid) and {png} "
          f"(4 x 10 digits: input | heatmap, red = evidence for the predicted digit, blue = against; "
          f"above each: #sample index, y = true digit, p = predicted digit, the one explained)")
    return {"store": store_path, "png": png, "result": res, "accuracy": acc, "ratio": ratio}


def cmd_demo(args) -> int:
    run_demo(out=args.out, composite=args.composite, backend=args.backend, batch_size=args.batch_size,
             quiet=args.quiet, cmap=args.cmap)
    return 0


def _add_bench(p: argparse.ArgumentParser):
    p.add_argument("bench_args", nargs=argparse.REMAINDER,
                   help="[NAME] [ARGS...]: which harness script (bench/bench_NAME.py, e.g. cpu) and its arguments")


def _bench_root() -> Optional[str]:
    """The directory holding the ``bench/`` harness: the current directory or the source checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    for root in (os.getcwd(), os.path.dirname(os.path.dirname(here))):
        d = os.path.join(root, "bench")
        if os.path.isfile(os.path.join(d, "__main__.py")) or any(
                f.startswith("bench_") and f.endswith(".py") for f in (os.listdir(d) if os.path.isdir(d) else [])):
            return root
    return None


def cmd_bench(args) -> int:
    root = _bench_root()
    if root is None:
        print("fastlrp bench: the benchmark harness (bench/ in the fastlrp source repository) was not found; "
              "it is not part of the installed package: run this command from a fastlrp checkout", file=sys.stderr)
        return 2
    bench = os.path.join(root, "bench")
    scripts = sorted(f[len("bench_"):-3] for f in os.listdir(bench) if f.startswith("bench_") and f.endswith(".py"))
    rest = list(args.bench_args or [])
    if rest and rest[0] == "--":
        rest = rest[1:]
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, pkg_parent, env.get("PYTHONPATH", "")) if p)
    if rest and not rest[0].startswith("-") and rest[0] in scripts:
        cmd = [sys.executable, os.path.join(bench, f"bench_{rest[0]}.py"), *rest[1:]]
    elif os.path.isfile(os.path.join(bench, "__main__.py")):
        cmd = [sys.executable, "-m", "bench", *rest]
    else:
        print(f"fastlrp bench: say which harness to run: {', '.join(scripts) or '(none found)'} "
              f"(e.g. 'fastlrp bench {scripts[0] if scripts else 'cpu'} --quick'; found in {bench})", file=sys.stderr)
        return 2
    return subprocess.call(cmd, cwd=root, env=env)


def _add_verify(p: argparse.ArgumentParser):
    p.add_argument("store", help="a relevance store: a zarr directory, or the .npy file of a .npy store")
    p.add_argument("--source", help="the data file the store was computed from, to check each chunk's input too")
    p.add_argument("--key", help="array name inside the --source file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def cmd_verify(args) -> int:
    """Exit 0: the store is complete and intact; 1: problems found (listed); 2: no store to check."""
    from .dataset import verify_store

    try:
        report = verify_store(args.store, source=args.source, key=args.key, quiet=args.quiet)
    except (InputError, ValueError, OSError, ImportError) as e:
        print(f"fastlrp verify: error: {e}", file=sys.stderr)
        return 2
    print(report)
    return 0 if report.ok else 1


#: name -> (help, add-arguments function or None, handler)
COMMANDS = {
    "info": ("version, build and backend availability", None, cmd_info),
    "explain": ("explain a whole data file with a saved model into a resumable relevance store", _add_explain,
                cmd_explain),
    "heatmap": ("render relevance (a store or .npy) as a PNG grid of heatmaps", _add_heatmap, cmd_heatmap),
    "demo": ("the built-in demo: explain 1797 handwritten digits with a small CNN, write heatmaps", _add_demo,
             cmd_demo),
    "bench": ("run the benchmark harness (bench/bench_NAME.py) from a source checkout", _add_bench, cmd_bench),
    "verify": ("check a relevance store end to end (every chunk, optionally against its source)", _add_verify,
               cmd_verify),
}


def add_commands(subparsers) -> None:
    """Add the commands of :data:`COMMANDS` to an argparse sub-parser object."""
    for name, (help_, add_args, handler) in COMMANDS.items():
        p = subparsers.add_parser(name, help=help_, description=help_)
        if add_args is not None:
            add_args(p)
        p.set_defaults(handler=handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastlrp", description="Fast Layer-wise Relevance Propagation")
    parser.add_argument("--version", action="version", version=f"fastlrp {_version()}")
    add_commands(parser.add_subparsers(dest="command", metavar="COMMAND"))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``fastlrp`` command line: run one command, return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print(f"fastlrp {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a message, not a traceback (FASTLRP_DEBUG=1 shows it)
        if os.environ.get("FASTLRP_DEBUG"):
            raise
        print(f"fastlrp {args.command}: error: {describe_error(e)}", file=sys.stderr)
        return 1


def describe_error(e: BaseException) -> str:
    """One message for an error: the user's mistakes (bad files, flags, data, models)
    as they are; anything else marked as unexpected, with how to see the traceback."""
    from .backends.base import BackendError
    from .dataset import StoreMismatchError
    from .errors import GraphError
    from .rules import RuleError

    user = (GraphError, InputError, RuleError, StoreMismatchError, BackendError, ValueError, OSError, ImportError)
    if isinstance(e, user):
        return str(e) or type(e).__name__
    return (f"{type(e).__name__}: {e} (unexpected: rerun with FASTLRP_DEBUG=1 to see the traceback, and please "
            "report it)")


def _ensure_parent(path: str, command: str) -> None:
    """Create the directory an output file goes into, saying so."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(parent):  # (a file in the way is reported by the writer)
        os.makedirs(parent, exist_ok=True)
        print(f"fastlrp {command}: created directory {parent}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
