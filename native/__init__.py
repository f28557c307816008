"""native: imago's C core, built by cffi in API mode (see build_core.py).

Public API: ``ffi`` and ``lib`` of the compiled extension ``native._core``, and
``PageReader`` (native/fastpath.c), the CPython binding of the hottest reads.
Everything that runs per word or per page lives in core.c; its header comment
states what the core owns and the invariants it keeps.  Python code reaches the
core only through ``pager._native``, which turns its status codes into
exceptions in one place.
"""
try:
    from native import _fastpath
    from native._core import ffi, lib
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        "imago's C core is not built; install with `pip install -e .` "
        "(needs a C compiler)"
    ) from exc


def _address(name: str) -> int:
    return int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))


_fastpath.bind(_address("ic_page_read"), _address("ic_read"), _address("ic_read_u64"),
               _address("ic_write"), _address("ic_write_u64"), _address("ic_hash"))
PageReader = _fastpath.PageReader

__all__ = ["PageReader", "ffi", "lib"]
