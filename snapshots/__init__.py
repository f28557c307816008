"""snapshots: boot snapshots, labels, time travel, branches, retention, vacuum,
bundles and the changes journal.

Not built yet: the snapshots issue fills this package.  It exports nothing.
"""
__all__: list[str] = []
