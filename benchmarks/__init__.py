"""Side-by-side speed benchmarks: data pipeline and training throughput (see documentation/performance.md)."""
