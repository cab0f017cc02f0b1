"""streamup: ship video recordings to S3 while they are still being written."""

__version__ = "0.1.0"
