"""Test support shared by the test suite and the benchmarks (as `ray.cluster_utils` is Ray's):
local clusters, the fault scenarios on a simulated multi-node cluster, and training rows with known
corruptions. Nothing in the package proper imports it."""
