"""gRPC: the servicer (protobuf in, one service call, protobuf out), the one protobuf mapping of the
domain types (:mod:`.convert`) and the interceptors (errors to status codes, bearer token)."""
