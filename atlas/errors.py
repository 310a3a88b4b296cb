"""Errors a user can act on. The CLI prints their message alone, without a traceback."""


class AtlasError(Exception):
    """Base class: the message says what went wrong, where, and how to fix it."""


class InvalidKeyError(AtlasError, ValueError):
    """A key string or key field that does not follow the key grammar."""


class UnknownKeyError(AtlasError, LookupError):
    """A key (or shorthand) that matches no stored variant, or several."""


class TextSetError(AtlasError, ValueError):
    """A text-set file or folder that cannot be imported as it is."""


class LoadError(AtlasError):
    """A model or tokenizer that cannot be loaded for scoring."""


class ScoringError(AtlasError):
    """Scoring produced values that must not be stored (NaN, inf)."""


class StoreError(AtlasError):
    """The atlas file refuses an operation (conflict, lock, missing text set)."""


class UnknownParentError(StoreError):
    """A variant's parent that is not a model of the atlas (nor about to be written with it)."""


class LockedError(StoreError):
    """Another process holds the atlas file."""


class ImportFormatError(AtlasError, ValueError):
    """A file of precomputed vectors that cannot be imported safely."""


class DamagedError(StoreError):
    """The atlas file is damaged (truncated, or a block fails its checksum)."""


class NoSpaceError(StoreError):
    """The disk (or the process's file size limit) refused a write to the atlas."""
