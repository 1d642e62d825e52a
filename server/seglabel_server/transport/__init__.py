"""The ways in: gRPC (:mod:`.grpc`), HTTP/JSON with the web page (:mod:`.http`), Ray Serve replicas
(:mod:`.ray`), and the process that serves them (:mod:`.server`). Each translates its wire format
to the service's calls and back; none computes."""
