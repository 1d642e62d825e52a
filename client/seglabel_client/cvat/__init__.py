"""seglabel inside CVAT, as CVAT runs models, each a thin proxy to a seglabel gRPC server:

- ``seglabel_client.cvat.detector``: an auto-annotation function for ``cvat-cli task auto-annotate
  TASK --function-module seglabel_client.cvat.detector -p server=str:HOST:PORT`` (and for CVAT's
  agent-run native functions): every image's masks (or polygons with ``--conv-mask-to-poly``),
  labelled with the vocabulary, their confidence as the shape's score.
- ``seglabel_client.cvat.interactor``: an interaction function (clicks and a box -> a mask) for
  CVAT's agents (``cvat-cli function create-native`` / ``run-agent``).
- ``seglabel_client.cvat.nuclio``: the handler of a nuclio function for self-hosted CVAT's
  serverless models (``nuclio/detector`` and ``nuclio/interactor`` hold their function.yaml).
"""

from __future__ import annotations

import io


def image_bytes(image) -> bytes:
    """A PIL image (as CVAT's SDK gives frames) as PNG bytes for the Segment call."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def connect(server: str, token: str = "", tls_ca: str = "", timeout: float = 300.0):
    from seglabel_client.client import SegmenterClient

    return SegmenterClient(server, timeout=timeout, tls_ca=tls_ca or None, token=token or None)
