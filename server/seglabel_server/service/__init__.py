"""The domain service: one object that loads the models, admits requests, resolves and checks them
once, and runs them on the pipeline; it knows nothing of protobuf or HTTP."""

from seglabel_server.service.loading import build_pipeline
from seglabel_server.service.service import SeglabelService, check_file_id

__all__ = ["SeglabelService", "build_pipeline", "check_file_id"]
