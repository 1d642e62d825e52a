"""HTTP/JSON (FastAPI) beside gRPC on the same service, the original application's routes, and the
web page (``web/``)."""
