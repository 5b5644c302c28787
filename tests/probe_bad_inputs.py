"""Probe: try every class of bad input a user can give fastlrp and report what happened.

    python tests/probe_bad_inputs.py [--category NAME] [--list]

Each case does one thing a user might do wrong (or a fault: a damaged file, a full
disk) and is counted as

- **handled**: a clear error of fastlrp's documented kinds (GraphError, InputError,
  RuleError, BackendError, StoreMismatchError, ValueError, TypeError, OSError) with a
  message, or a correct result checked against an independent computation;
- **unclear**: an error, but a raw one (KeyError, IndexError, AttributeError,
  ZeroDivisionError, JSONDecodeError, UnicodeDecodeError, BadZipFile, numpy's advice
  to enable pickle) that does not say what is wrong in fastlrp's terms;
- **silently wrong**: no error, but the result is wrong (or a broken store passes);
- **crashed**: the process died (a signal, libgomp ending it, ...).

The cases of each category run in a child process; when it dies, the case it was
running is counted as crashed and the rest of the category goes on in a new child.
The last line is the summary; the exit code is 1 when anything crashed, was
silently wrong or unclear. ``tests/test_probe.py`` runs it in the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import zipfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

CASES: dict = {}  # category -> [(name, fn)]


def case(category: str, name: str):
    def register(fn):
        CASES.setdefault(category, []).append((name, fn))
        return fn
    return register


class Wrong(Exception):
    """Raised by a case when fastlrp returned without error but the result is wrong."""


class Unclear(Exception):
    """Raised by a case when fastlrp refused the input but its message does not say what is wrong."""


def expect(cond: bool, what: str, unclear: bool = False) -> None:
    if not cond:
        raise (Unclear if unclear else Wrong)(what)


RAW_ERRORS = (KeyError, IndexError, AttributeError, ZeroDivisionError, UnicodeDecodeError, json.JSONDecodeError,
              zipfile.BadZipFile, AssertionError, NameError, RecursionError)


def classify(e: BaseException) -> str:
    import fastlrp
    from fastlrp.backends.base import BackendError
    from fastlrp.dataset import StoreMismatchError

    clear = (fastlrp.GraphError, fastlrp.InputError, fastlrp.RuleError, BackendError, StoreMismatchError,
             ValueError, TypeError, OSError)
    msg = str(e)
    if isinstance(e, RAW_ERRORS) or not isinstance(e, clear) or not msg or "allow_pickle" in msg:
        return "unclear"
    return "handled"


# ------------------------------------------------------------------------------------------
# shared fixtures (built lazily inside the child)


def tmpdir() -> str:
    return tempfile.mkdtemp(dir=os.environ.get("FASTLRP_PROBE_TMP"))


def graph():
    from _graphs import small_graph

    return small_graph()


def data(n=4, seed=1):
    return np.random.default_rng(seed).normal(size=(n, 1, 6, 6))


def explainer(backend="auto", composite="epsilon_plus"):
    import fastlrp

    return fastlrp.Explainer(graph(), composite, backend=backend)


def reference(x, target=None, composite="epsilon_plus"):
    return explainer("reference", composite).explain(np.asarray(x, dtype=np.float64), target=target)


def close(a, b, rtol=1e-4, atol=1e-6):
    return np.shape(a) == np.shape(b) and np.allclose(a, b, rtol=rtol, atol=atol)


# ------------------------------------------------------------------------------------------
# explain(): arrays, targets, seeds, composites, backends


def _input_case(name, make, same_as=None):
    @case("explain", name)
    def run():
        x = make()
        R = explainer().explain(x)
        if same_as is None:
            return "explained"
        expect(close(R, reference(same_as())), "relevance differs from the reference on the converted input")
        return "converted and explained correctly"


_x = lambda: data()  # noqa: E731
_input_case("nested lists", lambda: data().tolist(), _x)
_input_case("int array", lambda: np.round(data() * 3).astype(np.int32), lambda: np.round(data() * 3))
_input_case("float16 array", lambda: data().astype(np.float16), lambda: data().astype(np.float16))
_input_case("big-endian float32", lambda: data().astype(">f4"), lambda: data().astype(np.float32))
_input_case("non-contiguous view", lambda: np.ascontiguousarray(np.swapaxes(data(), 2, 3)).swapaxes(2, 3), _x)
_input_case("one sample without batch axis", lambda: data()[0], lambda: data()[0])


def _read_only():
    x = data()
    x.setflags(write=False)
    return x


_input_case("read-only array", _read_only, _x)


for _name, _bad in {
    "wrong sample shape": lambda: np.zeros((2, 1, 5, 5)),
    "too many axes": lambda: np.zeros((2, 1, 1, 6, 6)),
    "complex dtype": lambda: data().astype(np.complex64),
    "bool dtype": lambda: data() > 0,
    "string array": lambda: np.full((2, 1, 6, 6), "a"),
    "object array": lambda: np.array([object()] * 2),
    "NaN input": lambda: np.where(data() > 1, np.nan, data()),
    "Inf input": lambda: np.where(data() > 1, np.inf, data()),
    "empty batch": lambda: np.zeros((0, 1, 6, 6)),
    "0-d scalar": lambda: np.float32(1.0),
    "None input": lambda: None,
    "a dict": lambda: {"x": data()},
}.items():
    def _make(bad=_bad):
        def run():
            explainer().explain(bad())
            raise Wrong("accepted")
        return run
    case("explain", _name)(_make())


for _name, _target in {
    "target out of range": 5, "negative target": -1, "float target": 1.5, "target rows != samples": np.array([1, 2]),
    "target word unknown": "banana", "bool target array": np.array([True, False, True, True]),
    "seed of the wrong shape": np.zeros((4, 4)), "seed with NaN": np.full((4, 5), np.nan),
    "target (N, K) out of range": np.tile([0, 9], (4, 1)),
}.items():
    def _make(t=_target):
        def run():
            explainer().explain(data(), target=t)
            raise Wrong("accepted")
        return run
    case("explain", _name)(_make())


@case("explain", "target all")
def _target_all():
    R = explainer().explain(data(), target="all")
    expect(close(R, reference(data(), target="all")), "differs from the reference")
    return "explained every output"


@case("explain", "zero seed")
def _zero_seed():
    R = explainer().explain(data(), target=np.zeros((4, 5)))
    expect(R.shape == (4, 1, 6, 6) and not R.any(), "a zero seed must give zero relevance")
    return "zero relevance"


for _name, _comp in {"unknown composite": "nope", "negative epsilon": "epsilon_plus(epsilon=-1)",
                     "unknown composite keyword": "epsilon_plus(foo=1)", "unterminated parameters": "epsilon_plus(",
                     "composite of the wrong type": 3}.items():
    def _make(c=_comp):
        def run():
            explainer(composite=c)
            raise Wrong("accepted")
        return run
    case("explain", _name)(_make())


@case("explain", "unknown backend")
def _bad_backend():
    explainer(backend="tpu")
    raise Wrong("accepted")


@case("explain", "not a graph")
def _not_a_graph():
    import fastlrp

    fastlrp.Explainer(object(), "epsilon_plus")
    raise Wrong("accepted")


@case("explain", "NaN weight")
def _nan_weight():
    import fastlrp

    g = graph()
    next(n for n in g.nodes if n.op == "dense").params["weight"][0, 0] = np.nan
    fastlrp.Explainer(g, "epsilon_plus")
    raise Wrong("accepted")


@case("explain", "4 threads x 10 calls on one Explainer")
def _threads():
    ex = explainer()
    xs = [data(seed=s) for s in range(4)]
    want = [reference(x) for x in xs]
    got, errors = {}, []

    def work(i):
        try:
            got[i] = [ex.explain(xs[i]) for _ in range(10)]
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
    expect(all(close(r, want[i]) for i in range(4) for r in got[i]), "a threaded call differs")
    return "all 40 results exact"


@case("explain", "the user's torch model is not modified")
def _torch_unmodified():
    try:
        import torch
    except ImportError:
        return "skipped: torch not installed"
    import fastlrp

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.ReLU(), torch.nn.Flatten(),
                            torch.nn.Linear(48, 4))
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    fastlrp.Explainer(fastlrp.from_torch(m, torch.randn(1, 1, 6, 6)), "epsilon_plus").explain(data())
    expect(m.training, "the model was switched to eval mode")
    expect(all(torch.equal(before[k], v) for k, v in m.state_dict().items()), "the model's state changed")
    return "state and mode unchanged"


# ------------------------------------------------------------------------------------------
# graph files


def _saved_graph() -> str:
    path = os.path.join(tmpdir(), "g.npz")
    graph().save(path)
    return path


def _with_header(edit):
    from test_graph_files import edit_header

    path = _saved_graph()
    edit_header(path, edit)
    return path


def _conv_attr(key, value):
    def edit(h):
        for d in h["nodes"]:
            if d["op"] == "conv":
                d["attrs"][key] = value
        return h
    return edit


def _file(content: bytes) -> str:
    path = os.path.join(tmpdir(), "m.npz")
    with open(path, "wb") as f:
        f.write(content)
    return path


def _truncated(keep):
    path = _saved_graph()
    data_ = open(path, "rb").read()
    return _file(data_[: int(len(data_) * keep)])


def _pickled():
    import pickle

    return _file(pickle.dumps({"weights": [1, 2]}))


def _npy():
    path = os.path.join(tmpdir(), "m.npz")
    with open(path, "wb") as f:
        np.save(f, np.ones(3))
    return path


GRAPH_FILES = {
    "empty file": lambda: _file(b""),
    "1-byte file": lambda: _file(b"\x00"),
    "text file": lambda: _file(b"hello"),
    "a pickle": _pickled,
    "a .npy array": _npy,
    "truncated to 30%": lambda: _truncated(0.3),
    "truncated to 90%": lambda: _truncated(0.9),
    "bad JSON header": lambda: _with_header(lambda h: b"{nope"),
    "header not UTF-8": lambda: _with_header(lambda h: b"\xff\xfe"),
    "header without nodes": lambda: _with_header(lambda h: {k: v for k, v in h.items() if k != "nodes"}),
    "header without output": lambda: _with_header(lambda h: {k: v for k, v in h.items() if k != "output"}),
    "version as a string": lambda: _with_header(lambda h: {**h, "version": "1"}),
    "future format version": lambda: _with_header(lambda h: {**h, "version": 99}),
    "stride 0": lambda: _with_header(_conv_attr("stride", {"__tuple__": [0, 0]})),
    "negative padding": lambda: _with_header(_conv_attr("padding", {"__tuple__": [{"__tuple__": [-1, -1]}] * 2})),
    "attrs not a mapping": lambda: _with_header(lambda h: {**h, "nodes": [h["nodes"][0]] + [
        {**d, "attrs": [1]} for d in h["nodes"][1:]]}),
    "missing file": lambda: os.path.join(tmpdir(), "nope.npz"),
    "a directory": tmpdir,
}

for _name, _make_file in GRAPH_FILES.items():
    def _make(mk=_make_file):
        def run():
            import fastlrp

            path = mk()
            try:
                fastlrp.Graph.load(path)
            except fastlrp.GraphFileError as e:
                expect(path in str(e), "the error does not name the file", unclear=True)
                raise
            raise Wrong("loaded")
        return run
    case("graph_files", _name)(_make())


# ------------------------------------------------------------------------------------------
# flags and compiled entry points


for _n in (40000, 100000, 0, -5, 2.5, "4"):
    def _make(n=_n):
        def run():
            import fastlrp

            fastlrp.set_num_threads(n)
            raise Wrong("accepted")
        return run
    case("flags", f"set_num_threads({_n!r})")(_make())


@case("flags", "set_num_threads(max) then explain")
def _max_threads():
    import fastlrp

    fastlrp.set_num_threads(fastlrp.max_threads())
    try:
        R = explainer().explain(data())
    finally:
        fastlrp.set_num_threads(2)
    expect(close(R, reference(data())), "differs from the reference")
    return "explained correctly"


@case("flags", "cuda backend on a machine without a GPU")
def _cuda():
    import fastlrp
    from fastlrp import _ext

    if _ext.cuda_available():
        return "skipped: a GPU is usable here"
    try:
        fastlrp.get_backend("cuda")
    except Exception as e:
        expect("insufficient" not in str(e) or "no NVIDIA GPU driver" in str(e), f"unclear GPU message: {e}",
               unclear=True)
        raise
    raise Wrong("accepted")


def _core_cases():
    try:
        from test_entry_points import CORE_CASES
    except Exception:  # noqa: BLE001 - pytest missing: no kernel cases
        return {}
    return CORE_CASES


for _name, (_kind, _stmt, *_shape) in _core_cases().items():
    def _make(kind=_kind, stmt=_stmt, shape=_shape):
        def run():
            from fastlrp import _ext

            if _ext.core is None:
                return "skipped: fastlrp._core not built"
            c = _ext.core  # noqa: F841 - used by the statement

            def f(*s):  # noqa: F841 - used by the statement
                return np.random.default_rng(0).normal(size=s).astype(np.float32) + 0.1

            out = eval(stmt)
            if kind == "error":
                raise Wrong(f"accepted: {stmt}")
            expect(list(np.shape(out)) == list(shape[0]) and np.all(np.isfinite(out)), f"bad result {np.shape(out)}")
            return "correct empty/edge result"
        return run
    case("kernels", _name)(_make())


# ------------------------------------------------------------------------------------------
# the command line


def _cli(*argv, rc_ok=False, expect_text=""):
    from fastlrp import cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = cli.main([str(a) for a in argv])
    text = err.getvalue()
    expect("Traceback" not in text, "a traceback was printed", unclear=True)
    if rc_ok:
        expect(rc == 0, f"exit code {rc}: {text}")
        return "ok"
    expect(rc != 0, "exit code 0 for a mistake")
    expect(bool(text.strip()), "no message", unclear=True)
    expect(expect_text in text, f"the message does not say {expect_text!r}: {text.strip()}", unclear=True)
    return f"exit {rc}: {text.strip()[:100]}"


def _cli_files():
    import fastlrp
    from fastlrp.dataset import explain_dataset

    d = tmpdir()
    g = graph()
    g.save(os.path.join(d, "model.npz"))
    x = data(6).astype(np.float32)
    np.save(os.path.join(d, "x.npy"), x)
    ex = fastlrp.Explainer(g, "epsilon_plus", backend="reference")
    explain_dataset(ex, x, os.path.join(d, "one.zarr"), quiet=True)
    explain_dataset(ex, x, os.path.join(d, "two.zarr"), target=np.tile([0, 2], (6, 1)), quiet=True)
    return d


def _j(d, *p):
    return os.path.join(d, *p)


CLI_CASES = {
    "heatmap -k 5 on a 2-target store": lambda d: _cli("heatmap", _j(d, "two.zarr"), "-o", _j(d, "h.png"), "-k", 5,
                                                       expect_text="--target-index"),
    "heatmap -k 3 on a single-target store": lambda d: _cli("heatmap", _j(d, "one.zarr"), "-o", _j(d, "h.png"), "-k",
                                                            3, expect_text="one target per sample"),
    "heatmap bad --samples": lambda d: _cli("heatmap", _j(d, "one.zarr"), "-o", _j(d, "h.png"), "-s", "x",
                                            expect_text="--samples"),
    "heatmap of a missing store": lambda d: _cli("heatmap", _j(d, "none.zarr"), "-o", _j(d, "h.png")),
    "heatmap -o into a new directory": lambda d: _cli("heatmap", _j(d, "one.zarr"), "-o", _j(d, "new", "h.png"),
                                                      rc_ok=True),
    "explain a missing model": lambda d: _cli("explain", _j(d, "none.npz"), _j(d, "x.npy"), "-o", _j(d, "r.zarr"),
                                              expect_text="not found"),
    "explain a truncated model": lambda d: (open(_j(d, "t.npz"), "wb").write(open(_j(d, "model.npz"), "rb").read()[:90]),
                                            _cli("explain", _j(d, "t.npz"), _j(d, "x.npy"), "-o", _j(d, "r.zarr"),
                                                 expect_text="not a fastlrp graph file"))[1],
    "explain a model header without nodes": lambda d: (
        np.savez(_j(d, "h.npz"), __graph__=np.frombuffer(b'{"format": "fastlrp.graph", "version": 1}', np.uint8)),
        _cli("explain", _j(d, "h.npz"), _j(d, "x.npy"), "-o", _j(d, "r.zarr"), expect_text="no list of nodes"))[1],
    "explain a missing data file": lambda d: _cli("explain", _j(d, "model.npz"), _j(d, "none.npy"), "-o",
                                                  _j(d, "r.zarr")),
    "explain data of the wrong shape": lambda d: (np.save(_j(d, "bad.npy"), np.zeros((3, 1, 5, 5), np.float32)),
                                                  _cli("explain", _j(d, "model.npz"), _j(d, "bad.npy"), "-o",
                                                       _j(d, "r.zarr"), "-q"))[1],
    "explain with an unknown composite": lambda d: _cli("explain", _j(d, "model.npz"), _j(d, "x.npy"), "-o",
                                                        _j(d, "r.zarr"), "-c", "nope", expect_text="nope"),
    "explain with an unknown backend": lambda d: _cli("explain", _j(d, "model.npz"), _j(d, "x.npy"), "-o",
                                                      _j(d, "r.zarr"), "--backend", "tpu", expect_text="tpu"),
    "explain --batch-size 0": lambda d: _cli("explain", _j(d, "model.npz"), _j(d, "x.npy"), "-o", _j(d, "r.zarr"),
                                             "-b", 0, "-q"),
    "explain --chunk-size -1": lambda d: _cli("explain", _j(d, "model.npz"), _j(d, "x.npy"), "-o", _j(d, "r.zarr"),
                                              "--chunk-size", -1, "-q"),
    "explain --memory-budget lots": lambda d: _cli("explain", _j(d, "model.npz"), _j(d, "x.npy"), "-o",
                                                   _j(d, "r.zarr"), "--memory-budget", "lots", "-q"),
    "explain --target of the wrong length": lambda d: (np.save(_j(d, "t.npy"), np.zeros(2, np.int64)),
                                                       _cli("explain", _j(d, "model.npz"), _j(d, "x.npy"), "-o",
                                                            _j(d, "r.zarr"), "-t", _j(d, "t.npy"), "-q"))[1],
    "resume with another composite": lambda d: _cli("explain", _j(d, "model.npz"), _j(d, "x.npy"), "-o",
                                                    _j(d, "one.zarr"), "-c", "epsilon_plus_flat", "-q",
                                                    expect_text="--overwrite"),
    "explain a torch state_dict": lambda d: _state_dict(d),
}


def _state_dict(d):
    try:
        import torch
    except ImportError:
        return "skipped: torch not installed"
    torch.save(torch.nn.Linear(36, 5).state_dict(), _j(d, "sd.pt"))
    return _cli("explain", _j(d, "sd.pt"), _j(d, "x.npy"), "-o", _j(d, "r.zarr"), expect_text="checkpoint")


for _name, _fn in CLI_CASES.items():
    def _make(fn=_fn):
        def run():
            return fn(_cli_files())
        return run
    case("cli", _name)(_make())


# ------------------------------------------------------------------------------------------
# the dataset store: a week-long run left alone must end right or say it is not


def _store_run(kind: str, x=None, chunk=8):
    """A complete store of 32 samples in chunks of 8 (zarr or .npy), its explainer and data."""
    from fastlrp.dataset import explain_dataset

    x = data(32) if x is None else x
    path = os.path.join(tmpdir(), "r.zarr" if kind == "zarr" else "r.npy")
    ex = explainer("reference")
    explain_dataset(ex, x, path, chunk_size=chunk, quiet=True)
    return ex, x, path


def _relevance_files(path: str) -> list:
    """The files that hold relevance chunks (zarr), or the relevance array file (.npy)."""
    if path.endswith(".npy"):
        return [path]
    root = os.path.join(path, "relevance")
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if not f.startswith(("zarr.", ".z")))


def _damage(path: str, how: str) -> None:
    files = _relevance_files(path)
    f = files[len(files) // 2]
    raw = bytearray(open(f, "rb").read())
    if how == "delete":
        os.remove(f)
        return
    if how == "flip":
        raw[len(raw) - 17] ^= 0x5A
    elif how == "truncate":
        raw = raw[: len(raw) // 2]
    with open(f, "wb") as fh:
        fh.write(bytes(raw))


def _resume_repairs(kind, how):
    def run():
        import warnings

        from fastlrp.dataset import explain_dataset, load_store, verify_store

        ex, x, path = _store_run(kind)
        _damage(path, how)
        report = verify_store(path)
        expect(not report.ok, f"verify_store passed a store with a chunk {_PAST[how]}")
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            explain_dataset(ex, x, path, chunk_size=8, quiet=True)
        st = load_store(path)
        expect(close(np.asarray(st["relevance"][:]), ex.explain(x), rtol=1e-12, atol=1e-12),
               f"after a chunk {_PAST[how]} the resumed store differs from the model's relevance")
        expect(np.asarray(st["valid"][:]).all(), "samples not marked valid after the repair")
        expect(verify_store(path).ok, "verify_store still reports problems after the repair")
        return f"verify_store found it; the resume recomputed it ({report.problems[0][:80]})"
    return run


def _changed_source(kind, where):
    def run():
        from fastlrp.dataset import explain_dataset

        ex, x, path = _store_run(kind)
        y = x.copy()
        y[{"first": 0, "later": 20, "last": 31}[where]] += 1.0
        explain_dataset(ex, y, path, chunk_size=8, quiet=True)
        raise Wrong(f"a source changed in its {where} chunk was resumed")
    return run


_PAST = {"delete": "deleted", "flip": "with a flipped byte", "truncate": "truncated"}
for _kind in ("zarr", "npy"):
    for _how in ("delete", "flip", "truncate"):
        if not (_kind == "npy" and _how == "delete"):
            case("store", f"{_kind}: a relevance chunk {_PAST[_how]}")(_resume_repairs(_kind, _how))
    for _where in ("first", "later", "last"):
        case("store", f"{_kind}: source changed in the {_where} chunk after a complete run")(
            _changed_source(_kind, _where))


@case("store", "verify a path that is not a store")
def _verify_not_a_store():
    from fastlrp.dataset import verify_store

    report = verify_store(tmpdir())
    expect(not report.ok, "an empty directory verified as a store")
    return f"not ok: {report.problems[0][:80]}"


@case("store", "fastlrp verify on a damaged store")
def _cli_verify():
    ex, x, path = _store_run("zarr")
    _damage(path, "flip")
    return _cli("verify", path)


# ------------------------------------------------------------------------------------------
# running


def run_category(category: str, start: int) -> None:
    """Child: run the cases of ``category`` from ``start``, one JSON line before and after each."""
    import warnings

    warnings.simplefilter("ignore")
    for i, (name, fn) in enumerate(CASES[category]):
        if i < start:
            continue
        print(json.dumps({"start": i}), flush=True)
        try:
            detail = fn()
            status = "skipped" if str(detail).startswith("skipped") else "handled"
        except Wrong as e:
            status, detail = "silently wrong", str(e)
        except Unclear as e:
            status, detail = "unclear", str(e)
        except Exception as e:  # noqa: BLE001 - what the probe is for
            status, detail = classify(e), f"{type(e).__name__}: {e}"
        print(json.dumps({"index": i, "name": name, "status": status, "detail": str(detail)[:300]}), flush=True)


def probe(categories) -> dict:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, FASTLRP_PROBE_TMP=tmp)
        for cat in categories:
            start = 0
            while start < len(CASES[cat]):
                p = subprocess.run([sys.executable, __file__, "--child", cat, str(start)], capture_output=True,
                                   text=True, env=env, timeout=600)
                done, running = start, None
                for line in p.stdout.splitlines():
                    if not line.startswith("{"):
                        continue
                    rec = json.loads(line)
                    if "start" in rec:
                        running = rec["start"]
                    else:
                        results.append({"category": cat, **rec})
                        done, running = rec["index"] + 1, None
                if p.returncode != 0 and running is not None:
                    results.append({"category": cat, "index": running, "name": CASES[cat][running][0],
                                    "status": "crashed", "detail": f"exit {p.returncode}: {p.stderr.strip()[-300:]}"})
                    done = running + 1
                elif p.returncode != 0:
                    raise RuntimeError(f"the probe's child for {cat} failed: {p.stderr[-2000:]}")
                start = done
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--category", action="append", help=f"only these ({', '.join(CASES)})")
    ap.add_argument("--list", action="store_true", help="list the cases")
    ap.add_argument("--json", help="also write the results as JSON here")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        run_category(args.child[0], int(args.child[1]))
        return 0
    cats = args.category or list(CASES)
    if args.list:
        for c in cats:
            print("\n".join(f"{c}: {n}" for n, _ in CASES[c]))
        return 0
    results = probe(cats)
    for r in results:
        print(f"{r['status']:<15} {r['category']:<12} {r['name']}: {r['detail']}")
    counts = {s: sum(r["status"] == s for r in results)
              for s in ("handled", "skipped", "unclear", "silently wrong", "crashed")}
    print(f"tried {len(results)}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "counts": counts}, f, indent=1)
    return 1 if counts["unclear"] or counts["silently wrong"] or counts["crashed"] else 0


if __name__ == "__main__":
    sys.exit(main())
