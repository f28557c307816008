"""The object memory's exceptions (see image/__init__ for when each is raised)."""


class ImageError(Exception):
    """Base class of the object memory's own errors."""


class CorruptObject(ImageError):
    """An object's bytes break the heap's rules; ``address`` names where."""

    def __init__(self, message: str, address: int | None = None) -> None:
        super().__init__(message)
        self.address = address


class StaleHandle(ImageError):
    """A handle whose object is gone: made in a transaction that rolled back,
    or its image is closed."""


class ReadOnlyImage(ImageError):
    """A change was attempted through an image opened read-only."""
