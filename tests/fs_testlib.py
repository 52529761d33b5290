"""File-system helpers for tests of what survives a failed write."""

import contextlib
import resource
import signal


@contextlib.contextmanager
def disk_full(nbytes: int):
    """Writes past ``nbytes`` fail with EFBIG, as on a full disk (works as root too, where
    read-only permissions do not stop writes)."""
    old_sig = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_sig)
