"""The package's import structure: no import cycles, no use of another module's private names.

This checks every module under python/fastlrp (read with ``ast``, nothing is
imported), so it fails for any file of the package that breaks a rule, whoever
owns it. Imports inside functions (lazy imports) count like module-level ones:
a lazy import hides a cycle from the interpreter but not from a reader.

Rules:

- the graph "module A imports module B" has no cycle. ``from pkg import name``
  is an edge to the submodule ``pkg.name`` when there is one, else to ``pkg``
  (its ``__init__``); importing ``pkg.sub`` does not count as importing ``pkg``
  (every submodule import runs the parents' ``__init__``, that is not a design
  dependency);
- no module imports an underscore name (``_helper``, ``_Class``) from another
  module, nor reads one as an attribute of an imported module (``mod._helper``).
  A private *module* (``fastlrp._ext``, the compiled ``fastlrp._core``,
  ``fastlrp._cuda``, ``fastlrp._cuda_emu``, ``pkg._impl``) may be imported by the
  modules of the package it belongs to. Dunder names (``__version__``) are public.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

PKG_DIR = Path(__file__).resolve().parent.parent / "python" / "fastlrp"
#: compiled modules of the package (leaves of the graph: they import no fastlrp module)
EXTENSIONS = ("fastlrp._core", "fastlrp._cuda", "fastlrp._cuda_emu")


def package_sources(root: Path = PKG_DIR) -> dict:
    """{module name: source} for every .py file of the package at ``root``; compiled
    modules (``EXTENSIONS`` and any extension file found) with an empty source."""
    out = {name: "" for name in EXTENSIONS}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root.parent)
        if path.suffix == ".py":
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path.read_text(encoding="utf-8")
        elif path.suffix in (".so", ".pyd"):
            out[".".join(rel.parts[:-1] + (path.name.split(".")[0],))] = ""
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _parent(module: str) -> str:
    return module.rpartition(".")[0]


def analyse(sources: dict):
    """For ``sources`` ({module name: source}, as :func:`package_sources` makes):
    the import graph {module: {(imported module, line)}} and the uses of other
    modules' private names [(module, line, what)]."""
    modules = set(sources)
    packages = {_parent(m) for m in modules} - {""}
    root = min(modules, key=len).split(".")[0]
    edges = {m: set() for m in modules}
    private = []

    def check(mod, line, owner, name, what):
        """``name`` read from module ``owner``: a violation when private, unless it is
        a private submodule used inside its own package."""
        if not _private(name):
            return
        sub = f"{owner}.{name}"
        if sub in modules and (mod == owner or mod.startswith(owner + ".")):
            return
        private.append((mod, line, what))

    for mod, src in sources.items():
        tree = ast.parse(src, filename=mod)
        package = mod if mod in packages else _parent(mod)
        bound = {}  # local name -> the fastlrp module it refers to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] != root:
                        continue
                    parts = alias.name.split(".")
                    for i in range(1, len(parts)):
                        check(mod, node.lineno, ".".join(parts[:i]), parts[i], f"import {alias.name}")
                    edges[mod].add((alias.name, node.lineno))
                    bound[alias.asname or root] = alias.name if alias.asname else root
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    full = ".".join(base + ([node.module] if node.module else []))
                else:
                    full = node.module or ""
                if full.split(".")[0] != root:
                    continue
                parts = full.split(".")
                for i in range(1, len(parts)):
                    check(mod, node.lineno, ".".join(parts[:i]), parts[i], f"from {full} import ...")
                for alias in node.names:
                    sub = f"{full}.{alias.name}"
                    edges[mod].add((sub if sub in modules else full, node.lineno))
                    if sub in modules:
                        bound[alias.asname or alias.name] = sub
                    check(mod, node.lineno, full, alias.name, f"from {full} import {alias.name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound:
                owner = bound[node.value.id]
                check(mod, node.lineno, owner, node.attr, f"{node.value.id}.{node.attr} (of {owner})")
    return edges, sorted(set(private))


def cycles(edges: dict) -> list:
    """The strongly connected components with more than one module (or a self-import), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w, _ in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or any(w == v for w, _ in edges.get(v, ())):
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(out)


def _describe(comp, edges):
    inside = set(comp)
    return "; ".join(f"{a} -> {b} (line {line})" for a in comp for b, line in sorted(edges[a]) if b in inside)


# ------------------------------------------------------------------------------------------
# the checker on small made-up packages


def test_checker_finds_cycles_and_private_names():
    edges, private = analyse({
        "pkg": "from . import a\n",
        "pkg.a": "def f():\n    from .b import helper\n",  # a lazy import counts
        "pkg.b": "from .a import f\nfrom .c import _secret\nimport pkg.c as cm\nx = cm._other + cm.public\n",
        "pkg.c": "from . import _impl\n_secret = 1\n_other = 2\n",
        "pkg._impl": "",
        "pkg.sub": "",
        "pkg.sub.d": "from .. import _impl\nfrom ..c import __doc__\nimport pkg\nimport pkg._impl\n",
    })
    assert cycles(edges) == [["pkg.a", "pkg.b"]]
    assert [(m, line, what) for m, line, what in private] == [
        ("pkg.b", 2, "from pkg.c import _secret"),
        ("pkg.b", 4, "cm._other (of pkg.c)"),
    ]
    assert edges["pkg.sub.d"] == {("pkg._impl", 1), ("pkg.c", 2), ("pkg", 3), ("pkg._impl", 4)}
    assert edges["pkg"] == {("pkg.a", 1)}


def test_checker_allows_private_modules_only_inside_their_package():
    _, private = analyse({
        "pkg": "",
        "pkg.a": "from .inner import _impl\nfrom .inner._impl import x\n",
        "pkg.inner": "",
        "pkg.inner._impl": "x = 1\n",
        "pkg.inner.b": "from . import _impl\nfrom ._impl import x\n",
    })
    assert [(m, line) for m, line, _ in private] == [("pkg.a", 1), ("pkg.a", 2)]


def test_checker_sees_a_cycle_through_a_package_init():
    edges, _ = analyse({"pkg": "from .a import f\n", "pkg.a": "def f():\n    import pkg\n"})
    assert cycles(edges) == [["pkg", "pkg.a"]]


# ------------------------------------------------------------------------------------------
# the package itself (fails for whichever module breaks a rule)


def test_fastlrp_has_no_import_cycles():
    edges, _ = analyse(package_sources())
    found = cycles(edges)
    assert not found, "import cycles in python/fastlrp:\n" + "\n".join(_describe(c, edges) for c in found)


def test_fastlrp_modules_use_no_private_names_of_other_modules():
    _, private = analyse(package_sources())
    assert not private, "private names used across modules:\n" + "\n".join(
        f"  {m.replace('.', os.sep)}.py:{line}: {what}" for m, line, what in sorted(private))
