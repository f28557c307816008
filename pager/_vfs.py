"""The file boundary: every write, sync, rename and unlink the pager makes goes
through one ``Vfs`` object, as SQLite's do through its VFS.  Tests swap in a
subclass that fails the Nth call or holds writes until sync and then keeps,
drops or garbles them (tests/faults.py), so fault injection needs no mocking
of the pager itself.

Reads do not pass through here: committed bytes are read through read-only
mappings owned by the C core.  That is safe for the crash shim because the
pager never reads bytes of a commit before that commit's sync has returned.
"""
from __future__ import annotations

import os
import sys


class Vfs:
    """The real operating system."""

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        return os.open(path, flags | os.O_CLOEXEC, mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def pread(self, fd: int, length: int, offset: int) -> bytes:
        return os.pread(fd, length, offset)

    def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
        """Write all of data at offset.  On failure the OSError carries
        ``written``: how many bytes did land first (0: none)."""
        try:
            n = os.pwrite(fd, data, offset)
        except OSError as exc:
            exc.written = 0
            raise
        if n == len(data):   # the usual case, on the commit path
            return
        view = memoryview(data)[n:]
        while view:          # a short write (a signal, a nearly full disk): go on
            try:
                n = os.pwrite(fd, view, offset + len(data) - len(view))
            except OSError as exc:
                exc.written = len(data) - len(view)
                raise
            view = view[n:]

    if sys.platform == "darwin":
        def fdatasync(self, fd: int) -> None:
            import fcntl   # fsync on macOS does not reach the platter
            fcntl.fcntl(fd, fcntl.F_FULLFSYNC)
    else:
        def fdatasync(self, fd: int) -> None:
            os.fdatasync(fd)

    def fsync(self, fd: int) -> None:
        self.fdatasync(fd) if sys.platform == "darwin" else os.fsync(fd)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def mkdir(self, path: str) -> None:
        os.mkdir(path)
