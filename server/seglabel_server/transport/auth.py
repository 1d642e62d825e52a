"""The one bearer-token check, for gRPC's ``authorization`` metadata and HTTP's header alike, and
the tokens file: one token per line, each optionally followed by the best request class its
callers may ask for (``interactive``, ``default`` or ``batch``; absent: any), e.g.::

    3f9c...e1            # the team's token: clicks are interactive
    77ab...04 batch      # the nightly dataset job's: never ahead of anyone's clicks
"""

from __future__ import annotations

import base64
import binascii
import contextvars
import hmac
from dataclasses import dataclass

from seglabel_server.errors import Unauthenticated
from seglabel_server.scheduler.batching import CLASSES, INTERACTIVE

# The best request class of the call being served (the gRPC interceptor sets it for the handler).
CEILING: contextvars.ContextVar[int] = contextvars.ContextVar("seglabel_ceiling", default=INTERACTIVE)


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


@dataclass(frozen=True)
class Tokens:
    """The tokens a server accepts, each with its callers' best request class (0: interactive)."""

    entries: tuple[tuple[str, int], ...]

    @property
    def capped(self) -> bool:
        return any(c > INTERACTIVE for _, c in self.entries)

    def check(self, sent: str, basic: bool = False) -> int:
        """The ceiling of the token ``sent`` carries (Bearer, or with ``basic`` also HTTP Basic
        auth's password); Unauthenticated otherwise. Every token is compared, in constant time."""
        found, last = None, None
        for token, ceiling in self.entries:
            try:
                (check_bearer_or_basic if basic else check_bearer)(sent, token)
                found = ceiling if found is None else found
            except Unauthenticated as exc:
                last = exc
        if found is None:
            raise last if last is not None else Unauthenticated("no token is configured")
        return found


def read_tokens(path: str) -> Tokens | None:
    """The tokens in ``path`` (None when no file is configured): lines of ``TOKEN [CLASS]``, blank
    lines and ``#`` comments ignored; a file without a token, or a class not known, is refused."""
    if not path:
        return None
    entries = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            if len(words) > 2 or (len(words) == 2 and words[1] not in CLASSES):
                raise ValueError(f"{path}:{n}: want 'TOKEN' or 'TOKEN CLASS' (CLASS: {', '.join(CLASSES)})")
            entries.append((words[0], CLASSES[words[1]] if len(words) == 2 else INTERACTIVE))
    if not entries:
        raise ValueError(f"{path}: the token file is empty")
    return Tokens(tuple(entries))
