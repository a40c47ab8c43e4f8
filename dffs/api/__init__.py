"""Generated protobuf and gRPC modules for the dffs control plane (see protos/ and scripts/gen_protos.py)."""
