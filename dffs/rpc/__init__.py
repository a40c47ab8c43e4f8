"""gRPC plumbing for dffs: the trio <-> grpcio bridge (``dffs.rpc.bridge``) and the one
error-to-status mapping every servicer uses (``dffs.rpc.status``). Import those modules;
this package re-exports nothing, so each name has one home."""
