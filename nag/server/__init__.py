"""The gRPC server of the architecture generator (`nag serve`, `make serve`)."""
