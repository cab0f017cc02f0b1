"""The agent's CPU seconds for one bulk copy, code against code, setting against setting.

Each variant is a label, a source tree (a checkout without an editable install: `git archive`
of a branch into a folder) and extra settings; the variants take turns, round after round, on
one moto server, so a busy machine slows them alike. For issue 19 (BANDWIDTH_LIMIT=off costs
nothing), e.g.:

    git archive main | tar -x -C /tmp/main  &&  git archive HEAD | tar -x -C /tmp/branch
    cd /tmp && /path/to/.venv/bin/python /path/to/bench/ab_cpu.py \\
        main=/tmp/main off=/tmp/branch paced10G=/tmp/branch:BANDWIDTH_LIMIT=10G

Run it from a folder without a `streamup/` of its own (the current folder comes first on the
agent's import path).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import boto3
import bulk
from harness import ACCESS_KEY, SECRET_KEY, Bench, MiB, agent_settings, moto_server
from objects import write_random_file


def variant(text: str) -> tuple[str, dict[str, str]]:
    """`label=tree[:NAME=value...]` -> (label, extra settings with PYTHONPATH=tree)."""
    label, _, rest = text.partition("=")
    tree, *pairs = rest.split(":")
    extra = dict(pair.split("=", 1) for pair in pairs)
    return label, {"PYTHONPATH": tree, **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variants", nargs="+", type=variant, help="label=tree[:NAME=value...]")
    parser.add_argument("--mib", type=int, default=400, help="file size (default 400)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--reps", type=int, default=2, help="copies per agent start")
    opts = parser.parse_args()
    cpu: dict[str, list[float]] = {label: [] for label, _ in opts.variants}
    with tempfile.TemporaryDirectory() as scratch, moto_server(Path(scratch)) as moto:
        s3 = boto3.client(
            "s3", endpoint_url=moto.endpoint, region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
        )  # fmt: skip
        bench = Bench(moto=moto, s3=s3, workdir=Path(scratch), peers=[])
        source = Path(scratch) / "source.bin"
        sha = write_random_file(source, opts.mib * MiB)
        for _ in range(opts.rounds):
            for label, extra in opts.variants:
                settings = agent_settings(4, 10 * MiB, **extra)
                runs = bulk.streamup_runs(bench, settings, source, sha, opts.reps)["runs"]
                cpu[label] += [run["cpu_s"] for run in runs]
                print(label, [round(run["cpu_s"], 2) for run in runs], flush=True)
    for label, values in cpu.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        median, mean = statistics.median(values), statistics.mean(values)
        print(
            f"{label}: CPU-s median {median:.2f}, mean {mean:.2f} ± {spread:.2f}, n={len(values)}"
        )


if __name__ == "__main__":
    main()
