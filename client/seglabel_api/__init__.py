"""The seglabel contract for Python: gRPC stubs generated from ``proto/seglabel/v1/seglabel.proto``
(``seglabel_api.pb.seglabel.v1``, built by ``make proto`` or when this package is built), and the
bundled sample photos. Shared by the client, the server and export; depends on protobuf and grpcio
only."""

from __future__ import annotations

from importlib import resources

# scikit-image's public-domain sample photos.
SAMPLE_IMAGES = ("astronaut.jpg", "coffee.jpg")


def sample_image_bytes(name: str = SAMPLE_IMAGES[0]) -> bytes:
    """A bundled real photo, for demos, benchmarks and tests."""
    if name not in SAMPLE_IMAGES:
        raise ValueError(f"no sample image {name!r} (one of {', '.join(SAMPLE_IMAGES)})")
    return resources.files("seglabel_api").joinpath("assets", name).read_bytes()
