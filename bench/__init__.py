"""`make bench`: throughput, latency, memory and catch-up of ohip-relay on the local stack."""
