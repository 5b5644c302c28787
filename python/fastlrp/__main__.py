"""Command line: ``python -m fastlrp <command>`` (also the ``fastlrp`` script).

Commands are argparse subcommands registered in :data:`COMMANDS`; later issues
add ``explain``, ``heatmap``, ``demo`` and ``bench`` the same way.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
from typing import Callable, Optional, Sequence


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
    try:
        importlib.import_module("fastlrp._cuda_emu")
        lines.append("  cuda-emu  : usable (the CUDA kernels on a CPU SIMT emulator; for tests, slow)")
    except ImportError as e:
        lines.append(f"  cuda-emu  : not built ({e})")
    return lines


def cmd_info(args: argparse.Namespace) -> int:
    import numpy

    print(f"fastlrp {_version()}")
    print(f"python  {platform.python_version()} ({sys.executable})")
    print(f"numpy   {numpy.__version__}")
    print("backends:")
    for line in _backend_lines():
        print(line)
    return 0


#: name -> (help, function adding arguments, handler)
COMMANDS: dict[str, tuple[str, Optional[Callable[[argparse.ArgumentParser], None]], Callable]] = {
    "info": ("version, build and backend availability", None, cmd_info),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastlrp", description="Fast Layer-wise Relevance Propagation")
    parser.add_argument("--version", action="version", version=f"fastlrp {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_, add_args, handler) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if add_args is not None:
            add_args(p)
        p.set_defaults(handler=handler)
    from .cli import add_commands  # explain, heatmap, demo, bench

    add_commands(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
