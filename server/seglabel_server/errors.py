"""Typed domain errors. Pipeline and scheduler raise these; the servicer maps them to gRPC codes
in one place (:func:`grpc_status`)."""

from __future__ import annotations

import grpc


class SeglabelError(Exception):
    code = grpc.StatusCode.INTERNAL


class InvalidArgument(SeglabelError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class InvalidImage(InvalidArgument):
    pass


class UnknownFile(SeglabelError):
    code = grpc.StatusCode.NOT_FOUND


class Overloaded(SeglabelError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class LimitExceeded(SeglabelError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(SeglabelError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(SeglabelError):
    code = grpc.StatusCode.CANCELLED


class ModelError(SeglabelError):
    """A model failed to load or run."""

    code = grpc.StatusCode.INTERNAL


class Unavailable(SeglabelError):
    code = grpc.StatusCode.UNAVAILABLE


def grpc_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, SeglabelError):
        return exc.code, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
