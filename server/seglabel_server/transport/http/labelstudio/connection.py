"""Label Studio's own API, as the backend needs it: the task images (uploaded files, local storage,
cloud storage through Label Studio's presign route, plain URLs) and posting predictions. Its URL and
key come from ``/setup`` (the project creator's token Label Studio sends) or the server's settings
(``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY``). A personal access token (a JWT refresh token) is
exchanged for an access token; a legacy token is sent as ``Token <key>``."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request


class Unreachable(Exception):
    """A task's image or Label Studio's API could not be read; the message says which and why."""


def _is_jwt(key: str) -> bool:
    parts = key.split(".")
    return len(parts) == 3 and all(parts)


class Connection:
    """One Label Studio instance (``url``) and the key to read its files with."""

    def __init__(self, url: str, key: str = "", timeout: float = 30.0, max_bytes: int = 64 << 20):
        self.url = url.rstrip("/")
        self.key = key
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._access: tuple[str, float] | None = None  # (access token, expiry) for a JWT key
        self._lock = threading.Lock()

    # -- auth -------------------------------------------------------------------------------------
    def _auth(self) -> dict[str, str]:
        if not self.key:
            return {}
        if not _is_jwt(self.key):
            return {"Authorization": f"Token {self.key}"}
        with self._lock:
            if self._access is None or self._access[1] < time.time():
                got = self._json("POST", "/api/token/refresh/", {"refresh": self.key}, auth=False)
                self._access = (str(got["access"]), time.time() + 240)  # Label Studio's last 5 min
            return {"Authorization": f"Bearer {self._access[0]}"}

    def _open(self, req: urllib.request.Request):
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)  # noqa: S310 - the URL is checked
        except urllib.error.HTTPError as exc:
            raise Unreachable(f"{req.full_url}: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise Unreachable(f"{req.full_url}: {getattr(exc, 'reason', exc)}") from None

    def _json(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", **(self._auth() if auth else {})}
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        with self._open(req) as resp:
            return json.loads(resp.read() or b"{}")

    # -- calls ------------------------------------------------------------------------------------
    def image_url(self, ref: str, task_id: int | None) -> tuple[str, bool]:
        """(URL to read a task's image ``ref`` from, whether it is Label Studio's and takes the key)."""
        if ref.startswith("/"):
            if not self.url:
                raise Unreachable(
                    f"{ref}: a Label Studio file, and no Label Studio URL is known (connect the backend "
                    "from Label Studio, or set --label-studio-url / LABEL_STUDIO_URL)"
                )
            return self.url + ref, True
        scheme = urllib.parse.urlsplit(ref).scheme
        if scheme in ("http", "https"):
            return ref, bool(self.url) and ref.startswith(self.url + "/")
        if scheme and self.url and task_id is not None:  # s3://, gs://, azure-blob://: Label Studio signs it
            token = base64.b64encode(ref.encode()).decode()
            return f"{self.url}/tasks/{task_id}/presign/?fileuri={urllib.parse.quote(token)}", True
        raise Unreachable(f"{ref!r} is not a URL seglabel can read")

    def read_image(self, ref: str, task_id: int | None = None) -> bytes:
        """The bytes of a task's image (``data:`` URIs decoded here); Unreachable with the reason."""
        if ref.startswith("data:"):
            try:
                return base64.b64decode(ref.split(",", 1)[1], validate=False)
            except (IndexError, ValueError) as exc:
                raise Unreachable(f"a data: URI that is not base64 ({exc})") from None
        url, ours = self.image_url(ref, task_id)
        req = urllib.request.Request(url, headers=self._auth() if ours else {})
        with self._open(req) as resp:
            data = resp.read(self.max_bytes + 1)
        if len(data) > self.max_bytes:
            raise Unreachable(f"{ref}: over {self.max_bytes} bytes")
        return data

    def post_prediction(self, task_id: int, prediction: dict) -> dict:
        """A prediction written into Label Studio (``POST /api/predictions/``), as its SDK does."""
        return self._json("POST", "/api/predictions/", {"task": task_id, **prediction})

    def prediction(self, prediction_id: int) -> dict:
        return self._json("GET", f"/api/predictions/{int(prediction_id)}/")
