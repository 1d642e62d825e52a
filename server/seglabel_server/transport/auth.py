"""The one bearer-token check, for gRPC's ``authorization`` metadata and HTTP's header alike."""

from __future__ import annotations

import base64
import binascii
import hmac

from seglabel_server.errors import Unauthenticated


def check_bearer(sent: str, token: str) -> None:
    """``sent`` (the ``authorization`` value) must be ``Bearer <token>``, compared in constant time;
    raises Unauthenticated otherwise."""
    if hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
        return
    raise Unauthenticated(
        "missing or wrong bearer token" if sent else "this server needs a bearer token (authorization)"
    )


def check_bearer_or_basic(sent: str, token: str) -> None:
    """As :func:`check_bearer`, or HTTP Basic auth whose password is the token (any user name): what
    Label Studio sends to an ML backend with basic auth (it has no bearer setting)."""
    if sent.startswith("Basic "):
        try:
            password = base64.b64decode(sent[6:], validate=True).decode().split(":", 1)[1]
        except (binascii.Error, UnicodeDecodeError, IndexError):
            raise Unauthenticated("malformed basic authorization") from None
        if hmac.compare_digest(password.encode(), token.encode()):
            return
        raise Unauthenticated("wrong password (the server's token) in basic authorization")
    check_bearer(sent, token)


def read_token(path: str) -> str | None:
    """The bearer token in ``path`` (None when no file is configured); an empty file is refused."""
    if not path:
        return None
    with open(path) as f:
        token = f.read().strip()
    if not token:
        raise ValueError(f"{path}: the token file is empty")
    return token
