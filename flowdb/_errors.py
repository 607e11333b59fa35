"""The exceptions flowdb raises on purpose (API.md section 3).

Every one derives from FlowError.  Wrong argument types raise the builtin
TypeError and out-of-range numbers ValueError; DataError is also a
ValueError and NotFoundError also a LookupError, so generic handlers work.
"""


class FlowError(Exception):
    """Base of every error flowdb raises on purpose."""


class NotFoundError(FlowError, LookupError):
    """A missing store, index, record (patch_record) or data directory."""


class ConstraintError(FlowError):
    """A unique-index violation, an existing store or key, a conflicting schema."""


class DataError(FlowError, ValueError):
    """An invalid key or key path, or a document that is not a JSON object."""


class ReadOnlyError(FlowError):
    """A write inside a read-only transaction."""


class TransactionInactiveError(FlowError):
    """Use of a transaction after commit or abort."""


class InvalidStateError(FlowError):
    """Use of an engine or database that has been shut down."""


class CorruptionError(FlowError):
    """A checksum or format check failed.  The message names file and offset."""

    def __init__(self, message, path=None, offset=None):
        where = ""
        if path is not None:
            where = f" in {path}" + (f" at offset {offset}" if offset is not None else "")
        super().__init__(f"{message}{where}")
        self.path = path
        self.offset = offset


class LockError(FlowError):
    """The data directory is locked by another engine (this or another process)."""
