"""Thin client for the seglabel gRPC service: sync and asyncio clients, CLI, analysis helpers,
benchmark. Depends on the generated stubs (``seglabel_api``) and grpcio, never on the server."""

from __future__ import annotations

from seglabel_api import SAMPLE_IMAGES, sample_image_bytes

__all__ = ["SAMPLE_IMAGES", "sample_image_bytes", "SegmenterClient", "AsyncSegmenterClient"]


def __getattr__(name):  # keep `import seglabel_client` light: grpc stubs load on first use
    if name in ("SegmenterClient", "AsyncSegmenterClient"):
        from seglabel_client import client

        return getattr(client, name)
    raise AttributeError(name)
