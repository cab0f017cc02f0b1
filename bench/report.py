"""docs/benchmarks.md from one run's results: the machine, the method, one table per workload
(medians, with the range over the repetitions), ratios between figures of the same run, and
the exact command lines."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any

MiB = 1024 * 1024
GiB = 1024 * MiB


def median(runs: Iterable[dict[str, Any]], name: str) -> float:
    return float(statistics.median(r[name] for r in runs))


def spread(runs: list[dict[str, Any]], name: str, digits: int = 1) -> str:
    """`median (min-max)`, or just the value for a single run."""
    values = [r[name] for r in runs]
    middle = f"{statistics.median(values):.{digits}f}"
    if len(values) == 1:
        return middle
    return f"{middle} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def size(n_bytes: float) -> str:
    if n_bytes >= GiB and n_bytes % GiB == 0:
        return f"{n_bytes / GiB:.0f} GiB"
    return f"{n_bytes / MiB:.0f} MiB"


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def facts(pairs: list[tuple[str, str]]) -> str:
    """A two-column table of labelled figures."""
    return table(["", ""], [list(pair) for pair in pairs])


def render(results: dict[str, Any]) -> str:
    work = results["workloads"]
    sections = [_header(results)]
    for name, section in (("bulk", _bulk), ("durable", _durable), ("many", _many),
                          ("folders", _folders)):  # fmt: skip
        if name in work:
            sections.append(section(work[name]) + "\n\n" + load_note(work[name]))
    sections.append(_commands(results))
    return "\n\n".join(sections) + "\n"


def _header(results: dict[str, Any]) -> str:
    m = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    peers = "; ".join(f"{v}" for v in m["peers"].values() if v) or "none found"
    return f"""# Benchmarks

Measured by `{results["argv"]}` on {results["started_at"]} (the whole run took
{results["duration_s"] / 60:.1f} min). Raw figures: `bench/results/*.json` (not committed). Each
figure is the median over the repetitions, with the range in parentheses; every ratio compares
figures of this same run.

## Machine

| | |
|---|---|
| CPU | {m["cpu"]}, {m["cores"]} cores |
| RAM | {m["ram_bytes"] / GiB:.1f} GiB |
| kernel | {m["kernel"]} |
| Python | {m["python"]} |
| streamup | commit {m["commit"]} |
| packages | {versions} |
| peers | {peers} |

## Method

- **One S3 server for everything**: moto in server mode on a loopback port, started once per run;
  every tool talks to it, and it shares the machine's {m["cores"]} cores with the tool being
  measured, so its CPU (Python) is part of every time (column *moto CPU*). moto keeps objects in
  memory and in spooled temporary files, closes the connection after every response (every
  request opens a new TCP connection, for every tool) and builds a completed multipart object
  by copying it in Python: CompleteMultipartUpload costs time proportional to the object, which
  real S3 does not. No size was scaled down for moto: its peak RSS over this run was
  {results["moto_peak_rss_bytes"] / GiB:.1f} GiB of {m["ram_bytes"] / GiB:.0f} GiB.
- **streamup** runs as `streamup run` (a child process, JSON log on stderr, `PROM_PORT=0`,
  embedded SQLite checkpoints). Times come from the timestamps of its log events
  (`part.uploaded` at `LOG_LEVEL=DEBUG`, `stream.verified`, `stream.completed` = object complete
  and metadata JSON written), on the clock the benchmark reads. CPU is `utime + stime` of the
  agent and its reaped children (ffprobe) from `/proc/PID/stat`; RSS is `VmRSS` sampled every
  0.2 s, and `VmHWM`.
- **End-of-stream detection is inside every streamup time.** `STREAM_TIMEOUT_SECONDS=2`. The
  writer (the benchmark itself) is a process on this host: when the agent has seen it holding
  the file open (its `/proc` scan runs at most once a second), it ends the stream about 1 s
  after the close; a copy that opens, fills and closes the file between two scans is ended by
  the idle timeout, 2 s after the last change.
- **Peers** run with their own defaults, configured by environment variables only; their time
  is the command's wall time, their CPU the `RUSAGE_CHILDREN` delta.
- `sync` before every measurement, so each starts with the same (empty) backlog of dirty pages;
  objects are deleted after each repetition."""


def load_note(outcome: dict[str, Any]) -> str:
    """How busy the rest of the machine was: a shared machine skews every figure."""
    load = outcome["machine_load"]
    share = load["other_processes_cpu_s"] / load["wall_s"]
    return (
        f"Other processes on the machine meanwhile: {load['other_processes_cpu_s']:.0f} CPU-s "
        f"in {load['wall_s']:.0f} s ({share:.0%} of one core)."
    )


def _bulk(bulk: dict[str, Any]) -> str:
    gib = bulk["size_bytes"] / GiB
    rows = []
    for config in bulk["streamup"]:
        s, runs = config["settings"], config["runs"]
        label = f"streamup, {s['UPLOAD_CONCURRENCY']} in flight, {size(int(s['CHUNK_SIZE_BYTES']))}"
        rate = bulk["size_bytes"] / MiB / median(runs, "complete_s")
        rows.append([
            label, spread(runs, "complete_s"), f"{rate:.0f}",
            f"{median(runs, 'cpu_s') / gib:.2f}", f"{median(runs, 'moto_cpu_s'):.1f}",
            spread(runs, "last_part_s"), spread(runs, "verified_s"),
        ])  # fmt: skip
    for name, peer in bulk["peers"].items():
        runs = peer["runs"]
        rate = bulk["size_bytes"] / MiB / median(runs, "complete_s")
        rows.append([
            f"{name} ({peer['defaults']})", spread(runs, "complete_s"), f"{rate:.0f}",
            f"{median(runs, 'cpu_s') / gib:.2f}", f"{median(runs, 'moto_cpu_s'):.1f}", "", "",
        ])  # fmt: skip
    header = ["tool", "to complete object, s", "MiB/s", "CPU s per GiB", "moto CPU, s",
              "last part, s", "verified, s"]  # fmt: skip
    best = min(bulk["streamup"], key=lambda c: median(c["runs"], "complete_s"))
    best_s, best_cpu = median(best["runs"], "complete_s"), median(best["runs"], "cpu_s")
    settings = best["settings"]
    ratios = [
        f"- Fastest streamup setting: UPLOAD_CONCURRENCY={settings['UPLOAD_CONCURRENCY']}, "
        f"CHUNK_SIZE_BYTES={settings['CHUNK_SIZE_BYTES']} ({best_s:.1f} s)."
    ]
    for name, peer in bulk["peers"].items():
        peer_s, peer_cpu = median(peer["runs"], "complete_s"), median(peer["runs"], "cpu_s")
        ratios.append(
            f"- streamup / {name}: wall time {best_s / peer_s:.2f}x, "
            f"CPU {best_cpu / peer_cpu:.2f}x."
        )
    moto = bulk["moto_complete_s"]
    copy_s = median(best["runs"], "copy_s")
    return f"""## 1. Bulk: a finished {size(bulk["size_bytes"])} file

streamup: the file (random bytes) is copied into the watched folder; the time runs from the start
of the copy to `stream.completed`. Peers: `aws s3 cp` / `rclone copyto` of the same file.
Repetitions: {bulk["reps"]} of each.

{table(header, rows)}

*last part*: the last `part.uploaded` (the copy itself takes ~{copy_s:.1f} s); *verified*: every
part re-read and compared, the SHA-256 computed, the tail sent. What remains after it is
CompleteMultipartUpload, ffprobe and the metadata PUT.

{chr(10).join(ratios)}
- moto's own CompleteMultipartUpload of this file (8 MiB parts, timed alone):
  {moto["no_checksum"]:.1f} s without a checksum algorithm (what streamup and rclone send) and
  {moto["crc32"]:.1f} s with CRC32 (awscli's default). Without one, moto computes a CRC64NVME of
  the whole object in Python; the difference ({moto["no_checksum"] - moto["crc32"]:.1f} s) is in
  streamup's and rclone's times and not in aws's, and real S3 has no such cost."""


def _durable(durable: dict[str, Any]) -> str:
    labels = list(durable["peer_commands"])
    rows = []
    for entry in durable["sizes"]:
        runs = entry["runs"]
        at_close = median(runs, "uploaded_at_close_bytes")
        peers = []
        for label in labels:
            key = f"after_end_s[{label}]"
            peers.append(
                f"{spread(runs, key)} ({median(runs, key) / median(runs, 'durable_s'):.1f}x)"
            )
        rows.append([
            size(entry["size_bytes"]), spread(runs, "write_s"),
            f"{at_close / MiB:.0f} MiB ({at_close / entry['size_bytes']:.1%})",
            spread(runs, "verified_s"), spread(runs, "completion_s"), spread(runs, "durable_s"),
            *peers,
        ])  # fmt: skip
    header = ["size", "writing, s", "in S3 at close", "close → verified, s",
              "verified → durable, s", "close → durable, s",
              *(f"{label} after the end, s (x streamup)" for label in labels)]  # fmt: skip
    rate = durable["rate_bytes_s"] / MiB
    return f"""## 2. Time to durable: a recording written at {rate:.0f} MiB/s

Seconds from the writer's close to the complete object with its metadata. The peer is "wait for
the end, then `aws s3 cp`": its whole upload of the finished file counts from the same close,
with awscli's default CRC32 checksums and without (then moto completes the upload the same slow
way as streamup's). Repetitions: {durable["reps"]} of each size.

{table(header, rows)}

*close → verified* is the agent's own work after the close: noticing the end (~1 s), sending
the last part and re-reading the whole file to verify it. *verified → durable* is moto's
CompleteMultipartUpload (proportional to the object and slowest without a checksum algorithm,
see workload 1), ffprobe and the metadata PUT."""


def _many(many: dict[str, Any]) -> str:
    peak, target = many["peak_rss_bytes"], many["rss_target_bytes"]
    exact = many["exact_objects"]
    pairs = [
        ("data written", f"{size(many['total_bytes'])} in {many['write_s']:.1f} s"),
        (
            "objects exact (metadata SHA-256 = local file)",
            f"{exact} / {many['streams']} ({verdict(exact == many['streams'])})",
        ),
        ("objects downloaded and compared", f"{many['downloaded_and_matched']} matched"),
        (
            "peak RSS of the agent (0.2 s samples)",
            f"{peak / MiB:.0f} MiB (target < {target / MiB:.0f} MiB: {verdict(peak < target)})",
        ),
        (
            "peak RSS while the files grow / after they are closed",
            f"{many['peak_rss_writing_bytes'] / MiB:.0f} MiB / "
            f"{many['peak_rss_after_close_bytes'] / MiB:.0f} MiB",
        ),
        ("VmHWM of the agent", f"{many['vmhwm_bytes'] / MiB:.0f} MiB"),
        ("agent CPU", f"{many['cpu_s']:.1f} s ({many['cpu_s_per_gib']:.2f} s per GiB)"),
        ("moto CPU", f"{many['moto_cpu_s']:.1f} s"),
        (
            "first stream verified / last object complete, after the close",
            f"{many['first_verified_after_close_s']:.1f} s / "
            f"{many['last_complete_after_close_s']:.1f} s",
        ),
    ]
    return f"""## 3. Many streams: {many["streams"]} files growing at once

Each file grows at {many["rate_bytes_s"] / MiB:.0f} MiB/s for {many["write_s"]:.0f} s, then all
are closed together.

{facts(pairs)}"""


def _folders(folders: dict[str, Any]) -> str:
    first, second = folders["first_pass"], folders["second_start"]
    quiet = second["discovered"] == 0 and second["write_requests"] == 0
    ready, target = second["ready_s"], folders["ready_target_s"]
    pairs = [
        (
            "first pass: all uploaded after",
            f"{first['upload_all_s']:.0f} s ({first['files_per_s']:.0f} files/s)",
        ),
        (
            "first pass: agent CPU, peak RSS",
            f"{first['cpu_s']:.0f} s, {first['peak_rss_bytes'] / MiB:.0f} MiB",
        ),
        ("first pass: SIGTERM to exit", f"{first['stop_s']:.1f} s"),
        (
            "second start: `agent.started` (first full scan included) after",
            f"{ready:.2f} s (target < {target:.0f} s: {verdict(ready < target)})",
        ),
        (
            "second start: `stream.discovered` events, write requests at moto",
            f"{second['discovered']}, {second['write_requests']} ({verdict(quiet)})",
        ),
        (
            "second start: RSS now, peak RSS",
            f"{second['rss_bytes'] / MiB:.0f} MiB, {second['peak_rss_bytes'] / MiB:.0f} MiB",
        ),
        (
            "second start: CPU to ready, then CPU per second",
            f"{second['cpu_to_ready_s']:.2f} s, {second['cpu_per_s_after_ready']:.3f} s/s",
        ),
    ]
    return f"""## 4. Big folders: {folders["files"]:,} small files already uploaded

{folders["files"]:,} files of {folders["file_bytes"] // 1024} KiB in folders of 100. First the
agent uploads them all; it is stopped with SIGTERM and started again on the same folder and
checkpoint store, then watched for {second["watched_s"]:.0f} s.

{facts(pairs)}"""


def _commands(results: dict[str, Any]) -> str:
    work = results["workloads"]
    lines = [f"# S3 server\n{results['moto_command']}"]
    if "bulk" in work:
        lines.append("# 1. bulk: streamup (the file is then copied into WATCH_DIR)")
        lines.extend(c["command"] for c in work["bulk"]["streamup"])
        lines.extend(p["command"] for p in work["bulk"]["peers"].values())
    if "durable" in work:
        lines.append("# 2. time to durable")
        lines.append(work["durable"]["command"])
        lines.extend(work["durable"]["peer_commands"].values())
    if "many" in work:
        lines.append(f"# 3. many streams\n{work['many']['command']}")
    if "folders" in work:
        lines.append(f"# 4. big folders (started twice)\n{work['folders']['command']}")
    return f"""## Commands

Every streamup run also has `WATCH_DIR`, `STATE_DIR`, `S3_ENDPOINT_URL`, `S3_BUCKET_NAME`,
`S3_ACCESS_KEY_ID`/`S3_SECRET_ACCESS_KEY` (`testing`) and `PROM_PORT=0` in its environment. awscli
gets `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`; rclone gets
`RCLONE_CONFIG_S3_TYPE=s3`, `RCLONE_CONFIG_S3_PROVIDER=Other`, `RCLONE_CONFIG_S3_ENDPOINT`,
`RCLONE_CONFIG_S3_ACCESS_KEY_ID`, `RCLONE_CONFIG_S3_SECRET_ACCESS_KEY` (no configuration file).

```sh
{chr(10).join(lines)}
```"""
