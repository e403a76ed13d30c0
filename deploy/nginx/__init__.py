"""nginx as a gRPC load balancer in front of several `nag serve` replicas."""
