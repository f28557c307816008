"""vm: Scheme (R7RS-small) in the image: reader, expander, compiler, actors.

Not built yet: the Scheme issue fills this package.  It exports nothing.
"""
__all__: list[str] = []
