"""The service on Ray Serve replicas behind Ray's gRPC proxy (the ``ray`` extra)."""
