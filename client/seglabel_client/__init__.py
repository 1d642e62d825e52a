"""Thin client for the seglabel gRPC service: sync and asyncio clients, CLI, analysis helpers, benchmark."""

from __future__ import annotations

from importlib import resources

SAMPLE_IMAGES = ("astronaut.jpg", "coffee.jpg")


def sample_image_bytes(name: str = "astronaut.jpg") -> bytes:
    """A bundled real photo (scikit-image's public-domain samples) for demos and tests."""
    return resources.files("seglabel_client").joinpath("assets", name).read_bytes()


def __getattr__(name):  # keep `import seglabel_client` light: grpc stubs load on first use
    if name in ("SegmenterClient", "AsyncSegmenterClient"):
        from seglabel_client import client

        return getattr(client, name)
    raise AttributeError(name)
