"""Every domain error kind has one gRPC status, and each error class carries the kind its name says."""

import grpc
import pytest
from seglabel_server import errors
from seglabel_server.transport.grpc.interceptor import GRPC_CODES, grpc_status


def test_every_kind_maps_to_a_status():
    assert set(GRPC_CODES) == set(errors.ErrorKind)
    # one status per kind, but FAILED_PRECONDITION: a model this server lacks (HTTP 501) and a
    # resource built for another one (a vocabulary of another CLIP model, HTTP 412)
    shared = {errors.ErrorKind.NOT_SERVED, errors.ErrorKind.PRECONDITION}
    codes = [c for k, c in GRPC_CODES.items() if k not in shared]
    assert len(set(codes)) == len(codes) and {GRPC_CODES[k] for k in shared} == {
        grpc.StatusCode.FAILED_PRECONDITION
    }


@pytest.mark.parametrize(
    "exc, code",
    [
        (errors.InvalidArgument("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.InvalidImage("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.UnknownFile("x"), grpc.StatusCode.NOT_FOUND),
        (errors.Overloaded("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.LimitExceeded("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.Unavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (errors.DeadlineExceeded("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.Cancelled("x"), grpc.StatusCode.CANCELLED),
        (errors.ModelError("x"), grpc.StatusCode.INTERNAL),
        (errors.Unauthenticated("x"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.AlreadyExists("x"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.FailedPrecondition("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (KeyError("x"), grpc.StatusCode.INTERNAL),
    ],
)
def test_errors_map_to_their_status(exc, code):
    got, message = grpc_status(exc)
    assert got == code and "x" in message


def test_client_strings_are_clipped_in_messages():
    assert errors.clip_text("abc") == "'abc'"
    long = errors.clip_text("f" * 100_000)
    assert len(long) < 100 and "100000 characters" in long
