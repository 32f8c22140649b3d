"""Speed benchmarks, one per user question (documentation/performance.md); figures in benchmarks/RESULTS.md."""
