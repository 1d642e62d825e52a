"""seglabel server: SAM2 masks + CLIP labels over gRPC. The serving path imports no torch."""

__version__ = "0.1.0"
