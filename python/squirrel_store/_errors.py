"""The exceptions of :mod:`squirrel_store`: one base class, :class:`Error`, and a subclass per
kind of failure, each also deriving from the matching builtin where there is one (a missing key
is a :class:`KeyError`). Messages name the store, key or offset concerned."""

from __future__ import annotations

__all__ = [
    "Error",
    "KeyNotFoundError",
    "InvalidKeyError",
    "CorruptionError",
    "LockedError",
    "ReadOnlyError",
    "ClosedError",
    "StoreNotFoundError",
    "StoreIOError",
    "UnsupportedVersionError",
    "ValueTooLargeError",
]


class Error(Exception):
    """Base class of every error raised by squirrel_store."""


class KeyNotFoundError(Error, KeyError):
    """No shard is stored under the key."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InvalidKeyError(Error, ValueError):
    """The key is empty, longer than 1024 bytes, or otherwise refused."""


class CorruptionError(Error):
    """A record, header or shard failed its checksum or does not decode."""


class LockedError(Error):
    """Another writer, in this process or another, holds the store's lock."""


class ReadOnlyError(Error):
    """The handle is read-only (opened so, or a writable handle used in a forked child)."""


class ClosedError(Error, ValueError):
    """The handle was closed."""


class StoreNotFoundError(Error, FileNotFoundError):
    """There is no store in the directory and the handle may not create one."""


class StoreIOError(Error, OSError):
    """An I/O call failed (or failed earlier: the handle then refuses writes until reopened)."""


class UnsupportedVersionError(Error):
    """The store was written by a format version this build does not read."""


class ValueTooLargeError(Error, ValueError):
    """A shard is larger than the configured limit."""
