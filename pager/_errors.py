"""The pager's exceptions.  Every failure a user can meet is one of these, with
a message that names the file, segment, page or commit involved."""


class PagerError(Exception):
    """Base of every error the page store raises."""


class CorruptImage(PagerError):
    """Bytes on disk fail a checksum, a bounds check or a format rule, or the
    path is not an image at all."""


class ImageLocked(PagerError):
    """Another writer holds the image's LOCK."""


class StoreFailed(PagerError):
    """A sync failed, so what is on disk can no longer be trusted to match what
    this process believes; the store refuses all further work until reopened."""


class CommitFailed(PagerError):
    """A commit could not be written (a full disk, say).  Nothing was
    acknowledged; the uncommitted pages are still held, so the caller may free
    space and commit again, or roll back."""


class ReadOnlyStore(PagerError):
    """A write or commit on a store opened with readonly=True, or on a view."""


class RecoveryWarning(UserWarning):
    """Opening dropped a commit record that failed its checks (an interrupted
    commit, or damage).  Never silent: a dropped record may have been
    acknowledged before the damage happened."""
