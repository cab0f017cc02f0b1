"""Process limits the agent raises for itself at start-up."""

from __future__ import annotations

import resource
import subprocess
import sys

CHILD = """
import resource
from streamup.memory import raise_open_file_limit
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, soft), hard))
print(raise_open_file_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])
"""


def test_open_file_limit_is_raised_to_the_hard_limit() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, check=True, timeout=30
    )
    returned, now = (int(x) for x in out.stdout.split())
    assert returned == now
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert now == hard if hard != resource.RLIM_INFINITY else now > 256
