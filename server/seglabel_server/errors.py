"""Typed domain errors with a transport-neutral kind. The pipeline, scheduler and service raise
these; each transport maps the kinds to its own codes in one place (gRPC: ``interceptor.py``)."""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    INVALID = "invalid"  # the request is wrong: fix it before retrying
    NOT_FOUND = "not_found"  # it names something the server does not have
    OVER_LIMIT = "over_limit"  # a limit or a full queue: smaller, or later
    UNAVAILABLE = "unavailable"  # not ready, or shutting down
    DEADLINE = "deadline"  # the request's deadline passed
    CANCELLED = "cancelled"  # the client went away
    UNAUTHENTICATED = "unauthenticated"  # no or wrong credentials
    PERMISSION = "permission"  # the credentials do not allow it (a request class above the token's)
    NOT_SERVED = "not_served"  # a capability this server does not have (its model is absent)
    CONFLICT = "conflict"  # it would overwrite something that exists (a vocabulary's name)
    PRECONDITION = "precondition"  # the server's state does not allow it (a vocabulary of another model)
    INTERNAL = "internal"  # the server's fault


class SeglabelError(Exception):
    """A domain error. ``retry_after_ms``, when set: when the client should try again (gRPC: the
    ``grpc-retry-pushback-ms`` trailer, which gRPC's retry policy honours; HTTP: ``Retry-After``)."""

    kind = ErrorKind.INTERNAL

    def __init__(self, message: str = "", retry_after_ms: int | None = None):
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class InvalidArgument(SeglabelError):
    kind = ErrorKind.INVALID


class InvalidImage(InvalidArgument):
    pass


class NotFound(SeglabelError):
    kind = ErrorKind.NOT_FOUND


class UnknownFile(NotFound):
    pass


class Overloaded(SeglabelError):
    """The server is full now (in-flight limit, memory budget): refused at the door, before any
    work, with a ``retry_after_ms`` when a retry is likely to be admitted."""

    kind = ErrorKind.OVER_LIMIT


class LimitExceeded(SeglabelError):
    kind = ErrorKind.OVER_LIMIT


class DeadlineExceeded(SeglabelError):
    kind = ErrorKind.DEADLINE


class Cancelled(SeglabelError):
    kind = ErrorKind.CANCELLED


class ModelError(SeglabelError):
    """A model failed to load or run."""

    kind = ErrorKind.INTERNAL


class Unavailable(SeglabelError):
    """Not ready or shutting down (with a ``retry_after_ms`` when it knows)."""

    kind = ErrorKind.UNAVAILABLE


class CapabilityUnavailable(SeglabelError):
    """Depth, OCR...: the model is not in the repository or failed to load; the message says which and why."""

    kind = ErrorKind.NOT_SERVED


class AlreadyExists(SeglabelError):
    kind = ErrorKind.CONFLICT


class FailedPrecondition(SeglabelError):
    kind = ErrorKind.PRECONDITION


class Unauthenticated(SeglabelError):
    kind = ErrorKind.UNAUTHENTICATED


class PermissionDenied(SeglabelError):
    kind = ErrorKind.PERMISSION


def clip_text(value: str, limit: int = 64) -> str:
    """A client-sent string as it may appear in a message: repr'd, at most ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}… ({len(value)} characters)"


def error_kind(exc: BaseException) -> tuple[ErrorKind, str]:
    """(kind, message a client may see) for any exception; unexpected ones are INTERNAL."""
    if isinstance(exc, SeglabelError):
        return exc.kind, str(exc)
    return ErrorKind.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
