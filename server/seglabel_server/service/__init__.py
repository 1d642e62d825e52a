"""The domain service: :class:`SeglabelService` resolves and checks each request once and runs it
on the pipeline, over its parts (lifecycle, admission, image source, vocabularies); it knows
nothing of protobuf or HTTP."""

from seglabel_server.service.loading import build_pipeline
from seglabel_server.service.service import SeglabelService

__all__ = ["SeglabelService", "build_pipeline"]
