"""native: imago's C core, built by cffi in API mode (see build_core.py).

Public API: ``ffi`` and ``lib`` of the compiled extension ``native._core``.
Everything that runs per word or per page lives in core.c; its header comment
states what the core owns and the invariants it keeps.  Python code reaches the
core only through ``pager._native``, which turns its status codes into
exceptions in one place.
"""
try:
    from native._core import ffi, lib
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        "imago's C core is not built; install with `pip install -e .` "
        "(needs a C compiler)"
    ) from exc

__all__ = ["ffi", "lib"]
