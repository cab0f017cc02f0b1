"""Checkpoint stores: one Protocol, an embedded SQLite default and Redis (the seed's schema)."""

from streamup.checkpoint.base import CheckpointStore

__all__ = ["CheckpointStore"]
