"""Build and install imago: the C core (cffi, API mode) and the Python layers."""
from setuptools import Extension, setup

setup(
    name="imago",
    version="0.1.0",
    description="A persistent, Smalltalk-like object image for Python",
    python_requires=">=3.11",
    packages=["native", "pager", "image", "vm", "snapshots", "browser"],
    package_data={"native": ["core.c", "core_api.h", "fastpath.c", "fastpath.h", "objmem.c"]},
    # The CPython binding of the hottest reads (see native/fastpath.c); it calls
    # the cffi-built core through function pointers bound at import.
    ext_modules=[Extension("native._fastpath", ["native/fastpath.c", "native/objmem.c"],
                           depends=["native/fastpath.h"],
                           extra_compile_args=["-std=c11", "-O2", "-Wall", "-Werror"])],
    setup_requires=["cffi>=1.16,<3"],
    cffi_modules=["native/build_core.py:ffibuilder"],
    install_requires=[
        "cffi>=1.16,<3",
        "sortedcontainers>=2.4,<3",
        "zstandard>=0.22,<1",
        "prompt_toolkit>=3.0.40,<4",
    ],
    extras_require={
        # pytest and hypothesis run the suite; lmdb and ZODB are benchmark peers
        # (bench/bench_pager.py, bench/bench_inbox.py) that the benchmark smoke
        # tests import, so the suite needs them (sqlite3 ships with Python).
        # ZODB brings BTrees, persistent and transaction; measured with ZODB 6.
        "test": ["pytest>=8,<10", "hypothesis>=6.100,<7", "lmdb>=1.4,<4", "ZODB>=6,<7"],
    },
    entry_points={"console_scripts": ["imago = browser.cli:main"]},
)
