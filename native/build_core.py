"""cffi build script for imago's C core (API mode).

setup.py names this file in ``cffi_modules``; it compiles native/core.c into
the extension module ``native._core``.  The declarations come verbatim from
core_api.h, so the C prototypes and the Python binding cannot drift apart.
"""
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

ffibuilder = FFI()
ffibuilder.cdef((HERE / "core_api.h").read_text())
ffibuilder.set_source(
    "native._core",
    '#include <stdint.h>\n#include <stddef.h>\n#include "core_api.h"\n',
    sources=[str(HERE / "core.c")],
    include_dirs=[str(HERE)],
    # C99/C11 with warnings as errors keeps the core portable across gcc and clang.
    extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-D_DEFAULT_SOURCE"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=False)
