"""image: the object memory (tagged words, objects, allocator, collector,
persistent types, handles, transactions, blobs) over pager.

Not built yet: the object-memory issue fills this package.  It exists now so
that the package layout of DESIGN.md installs from the start; it exports
nothing.
"""
__all__: list[str] = []
