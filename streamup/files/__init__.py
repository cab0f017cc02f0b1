"""Everything about the local file: discovery (watcher), reading it (source), who writes it
(writers) and what it contains (probe). Nothing here knows S3 or the checkpoint store."""
