"""The one bearer-token check, for gRPC's ``authorization`` metadata and HTTP's header alike."""

from __future__ import annotations

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


def read_token(path: str) -> str | None:
    """The bearer token in ``path`` (None when no file is configured); an empty file is refused."""
    if not path:
        return None
    with open(path) as f:
        token = f.read().strip()
    if not token:
        raise ValueError(f"{path}: the token file is empty")
    return token
