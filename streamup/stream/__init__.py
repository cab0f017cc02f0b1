"""One recording's journey as a stream: the per-stream worker, the pure lifecycle rules,
finalisation (verify, complete, metadata), recovery after a restart and fleet ownership."""
