"""The error tree of the library, on one page.

Every failure the library raises is a ``KooGalleryError``. What a caller must do next depends
only on which branch it sits in, so the tree is drawn by consequence:

    KooGalleryError
    ├── ConfigurationError        fix the settings; nothing was dead-lettered, retrying won't help
    │   └── AuthenticationError   the platform refused the credentials or a signature
    ├── TransientError            try again later; the same records, the same bytes
    │   └── DeadlineExceeded      time ran out before every record was delivered
    └── RecordError               this one record can never succeed as it is; dead-letter it
        └── RecordValidationError a field breaks a rule, found before anything was sent

Record-level rejections by the platform do not raise: the client isolates them and reports them
as dead-lettered outcomes, so one bad record never blocks its neighbours.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "DeadlineExceeded",
    "KooGalleryError",
    "RecordError",
    "RecordValidationError",
    "TransientError",
]


class KooGalleryError(Exception):
    """Base class of every error this library raises on purpose."""


class ConfigurationError(KooGalleryError):
    """The settings are wrong or incomplete: a person must change them before a retry helps."""


class AuthenticationError(ConfigurationError):
    """The platform rejected the credentials, the body signature or the seller's permissions.

    ``error_code`` is the platform's code (``MKT.0102``, ``APIG.0303``, ...) and ``status`` the
    HTTP status, so the message can say exactly which setting to check.
    """

    def __init__(self, message: str, *, error_code: str | None, status: int | None) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.status = status


class TransientError(KooGalleryError):
    """A failure that may pass on its own: network trouble, throttling, a platform-side error."""


class DeadlineExceeded(TransientError):
    """The caller's time budget ran out with records still undelivered (they stay pending)."""


class RecordError(KooGalleryError):
    """A single usage record can never be accepted as it is."""


class RecordValidationError(RecordError, ValueError):
    """A record breaks a field rule; raised before any request is made.

    ``field`` names the offending field (``usage_value``, ``begin_time``...) so that a dead letter
    can say precisely what to correct.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message
