"""The S3 side: the multipart client (every library error translated here), the pure part
arithmetic of S3's limits, and the reaper of orphaned multipart uploads."""
