"""docs/benchmarks.md from one run's results: the machine, the method, one table per workload
(medians, with the range over the repetitions), ratios between figures of the same run, and
the exact command lines."""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Iterable
from pathlib import Path
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


def spool_text(results: dict[str, Any]) -> str:
    spool = results.get("moto_spool")
    if not spool:
        return "on the disk the agent's checkpoints and the recordings are on"
    return (
        f"in `{spool}` (`--moto-spool`), off the disk the agent's checkpoints and the recordings"
        " are on, as a remote server's storage would be"
    )


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
    if "bulk" in work or "durable" in work:
        sections.append(_targets(work) + "\n\n" + _load_summary(work))
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
    crt = "; ".join(f"`{k}`: {v}" for k, v in m.get("awscrt_beside_aws", {}).items()) or "no aws"
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
| awscrt beside awscli | {crt} (with awscrt, awscli's CRC32 and signing go through the CRT) |

## Method

- **One S3 server for everything**: moto in server mode on a loopback port, started once per run;
  every tool talks to it, and it shares the machine's {m["cores"]} cores with the tool being
  measured, so its CPU (Python) is part of every time (column *moto CPU*). moto keeps objects in
  memory and in spooled temporary files ({spool_text(results)}), closes the connection
  after every response (every request opens a new TCP connection, for every tool) and builds a
  completed multipart object by copying it in Python: CompleteMultipartUpload costs time
  proportional to the object, which real S3 does not, and more when the object's checksum is
  FULL_OBJECT (asked for, or the default without a checksum algorithm: moto copies the object
  once more to checksum it whole).
  moto's own figures are measured alone in the same run (`bench/calibrate.py`): the *server
  ceiling* (how fast it accepts the bytes at all) and its CompleteMultipartUpload time for each
  checksum. No size was scaled down for moto: its peak RSS over this run was
  {results["moto_peak_rss_bytes"] / GiB:.1f} GiB of {m["ram_bytes"] / GiB:.0f} GiB.
- **streamup** runs as `streamup run` (a child process, JSON log on stderr, `PROM_PORT=0`,
  embedded SQLite checkpoints). Times come from the timestamps of its log events
  (`part.uploaded` and `stream.checked` at `LOG_LEVEL=DEBUG`, `stream.verified`,
  `stream.completed` = object complete and metadata JSON written), on the clock the benchmark
  reads. The proof mode is the one its start-up probe logs (`s3.integrity`); the metadata's
  `integrity_proof` and `sha256` (checked against the file) are read back after every copy.
  CPU is `utime + stime` of the agent and its reaped children (ffprobe) from `/proc/PID/stat`;
  RSS is `VmRSS` sampled every 0.2 s, and `VmHWM`.
- **End-of-stream detection is inside every streamup time.** `STREAM_TIMEOUT_SECONDS=2`. The
  writer (the benchmark itself) is a process on this host: when the agent has seen it holding
  the file open (its `/proc` scan runs at most once a second), it ends the stream about 1 s
  after the close; a copy that opens, fills and closes the file between two scans is ended by
  the idle timeout, 2 s after the last change.
- **Peers** run with their own defaults, configured by environment variables only; their time
  is the command's wall time, their CPU the `RUSAGE_CHILDREN` delta.
- `sync` before every measurement, so each starts with the same (empty) backlog of dirty pages;
  objects are deleted after each repetition."""


def _load_summary(work: dict[str, Any]) -> str:
    """The machine's load during each workload, next to the verdicts it may have swayed."""
    lines = []
    for name, outcome in work.items():
        load = outcome["machine_load"]
        share = load["other_processes_cpu_s"] / load["wall_s"]
        lines.append(
            f"{name}: {load['other_processes_cpu_s']:.0f} CPU-s in {load['wall_s']:.0f} s "
            f"({share:.0%} of one core{'; **a loaded machine**' if share > 0.25 else ''})"
        )
    return "Other processes on the machine (2 cores shared): " + "; ".join(lines) + "."


def load_note(outcome: dict[str, Any]) -> str:
    """How busy the rest of the machine was: a shared machine skews every figure."""
    load = outcome["machine_load"]
    share = load["other_processes_cpu_s"] / load["wall_s"]
    return (
        f"Other processes on the machine meanwhile: {load['other_processes_cpu_s']:.0f} CPU-s "
        f"in {load['wall_s']:.0f} s ({share:.0%} of one core)."
    )


# ---------------------------------------------------------------------- the targets of issue 12

WALL_TARGET = 0.9  # streamup's wall time, as a fraction of `aws s3 cp`'s (1 GiB)
CPU_TARGET = 1.0  # streamup's CPU per GiB, as a fraction of `aws s3 cp`'s, in the mode moto needs
CEILING_TARGET = 0.35  # streamup's rate, as a fraction of the server ceiling (400 MiB)
DURABLE_TARGET_S = 3.0  # close → durable, over moto's own completion of that object (2 GiB)


def label_of(config: dict[str, Any]) -> str:
    s = config["settings"]
    mode = config["mode"]
    if config["configured_mode"] == "auto":
        mode = f"auto → {mode}"
    arrival = {"move": "moved in", "copy": "copied in"}[config.get("arrival", "copy")]
    return (
        f"streamup, {mode}, {s['UPLOAD_CONCURRENCY']} in flight, "
        f"{size(int(s['CHUNK_SIZE_BYTES']))}, {arrival}"
    )


def _primary(config: dict[str, Any], entry: dict[str, Any]) -> bool:
    first = entry["streamup"][0].get("arrival", "copy")
    return config["configured_mode"] == "auto" and config.get("arrival", "copy") == first


def probed(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The streamup settings run in the mode the probe chose (`S3_INTEGRITY_MODE=auto`), the
    file arriving the first way asked for."""
    return [c for c in entry["streamup"] if _primary(c, entry)]


def fastest(entry: dict[str, Any]) -> dict[str, Any]:
    return min(probed(entry), key=lambda c: median(c["runs"], "complete_s"))


def forced(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows beside the sweep: each forced mode, each other arrival, at the fastest setting."""
    return [c for c in entry["streamup"] if not _primary(c, entry)]


def aws_runs(entry: dict[str, Any]) -> list[dict[str, Any]] | None:
    peer = entry["peers"].get("aws")
    return None if peer is None else list(peer["runs"])


def ceiling_share(entry: dict[str, Any], runs: list[dict[str, Any]]) -> float:
    """The server ceiling's time over the tool's: the fraction of the ceiling's rate reached."""
    return float(entry["ceiling"]["best_accept_s"]) / median(runs, "complete_s")


def ceiling_rounds(entry: dict[str, Any]) -> str:
    """The ceiling's time in each of its measurements (before streamup's copies, after them),
    for the number in flight that gave the best median."""
    ceiling = entry["ceiling"]
    runs = min(ceiling["by_in_flight"].values(), key=lambda r: median(r, "accept_s"))
    rounds = sorted({r.get("round", 0) for r in runs})
    times = [median([r for r in runs if r.get("round", 0) == n], "accept_s") for n in rounds]
    if len(times) < 2:
        return f"{times[0]:.2f} s"
    return f"{times[0]:.2f} s before streamup's copies, {times[-1]:.2f} s after"


def bulk_targets(bulk: dict[str, Any]) -> list[str]:
    """Wall and CPU against aws on the largest file, the ceiling on the smallest."""
    entries = sorted(bulk["sizes"], key=lambda e: e["size_bytes"])
    lines = []
    big, small = entries[-1], entries[0]
    aws = aws_runs(big)
    best = fastest(big)
    if aws is None:
        lines.append(f"- {size(big['size_bytes'])}: no `aws` on this machine, no comparison.")
    else:
        aws_s, aws_cpu = median(aws, "complete_s"), median(aws, "cpu_s")
        wall = median(best["runs"], "complete_s") / aws_s
        cpu = median(best["runs"], "cpu_s") / aws_cpu
        meeting = sum(median(c["runs"], "complete_s") / aws_s <= WALL_TARGET for c in probed(big))
        lines.append(
            f"- {size(big['size_bytes'])}, wall time ≤ {WALL_TARGET}x `aws s3 cp`: "
            f"{median(best['runs'], 'complete_s'):.1f} s vs {aws_s:.1f} s = **{wall:.2f}x** "
            f"({label_of(best)}; {meeting} of {len(probed(big))} settings within it): "
            f"{verdict(wall <= WALL_TARGET)}"
        )
        lines.append(
            f"- {size(big['size_bytes'])}, CPU per GiB ≤ {CPU_TARGET}x `aws s3 cp` in the mode "
            f"moto needs ({best['mode']}): {median(best['runs'], 'cpu_s') / _gib(big):.2f} vs "
            f"{aws_cpu / _gib(big):.2f} CPU-s per GiB = **{cpu:.2f}x**: "
            f"{verdict(cpu <= CPU_TARGET)}"
        )
        for config in forced(big):
            config_cpu = median(config["runs"], "cpu_s") / aws_cpu
            # The issue set the CPU target for the ETag proof, what moto offered first: say
            # how that mode fares against it too.
            against = (
                f" (the CPU target in this mode: {verdict(config_cpu <= CPU_TARGET)})"
                if config["mode"] == "etag"
                else ""
            )
            lines.append(
                f"  - beside it, {label_of(config)}: wall "
                f"{median(config['runs'], 'complete_s') / aws_s:.2f}x, "
                f"CPU {config_cpu:.2f}x `aws s3 cp`{against}"
            )
    best = fastest(small)
    share = ceiling_share(small, best["runs"])
    lines.append(
        f"- {size(small['size_bytes'])} at ≥ {CEILING_TARGET:.0%} of the server ceiling "
        f"({small['ceiling']['best_mib_s']:.0f} MiB/s, in-memory UploadParts; "
        f"{ceiling_rounds(small)}): "
        f"{small['size_bytes'] / MiB / median(best['runs'], 'complete_s'):.0f} MiB/s = "
        f"**{share:.0%}** ({label_of(best)}): {verdict(share >= CEILING_TARGET)}"
    )
    lines.append(_where_the_time_goes(small, best["runs"]))
    return lines


def _where_the_time_goes(entry: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    """The tool's time in its steps, beside what moto alone needs for the same two steps."""
    alone = entry["moto_complete"]["kinds"].get("crc32c")
    completion = (
        ""
        if alone is None
        else f" (moto's completion alone: {median(alone['runs'], 'complete_s'):.1f} s)"
    )
    return (
        f"  - where the time goes: every part sent by {median(runs, 'last_part_s'):.1f} s "
        f"(moto accepts the bytes alone in {entry['ceiling']['best_accept_s']:.1f} s), "
        f"verified by {median(runs, 'verified_s'):.1f} s, then CompleteMultipartUpload, "
        f"HeadObject, ffprobe and the metadata in "
        f"{median(runs, 'complete_s') - median(runs, 'verified_s'):.1f} s{completion}"
    )


def durable_target(durable: dict[str, Any]) -> str:
    entry = max(durable["sizes"], key=lambda e: e["size_bytes"])
    runs = entry["runs"]
    over = median(runs, "over_moto_complete_s")
    each = ", ".join(f"{r['over_moto_complete_s']:.1f}" for r in runs)
    apart = median(runs, "durable_s") - median(runs, "moto_complete_s")
    return (
        f"- {size(entry['size_bytes'])} written at {durable['rate_bytes_s'] / MiB:.0f} MiB/s, "
        f"close → durable ≤ {DURABLE_TARGET_S:.0f} s + moto's own completion: "
        f"{median(runs, 'durable_s'):.1f} s, moto's completion alone "
        f"{median(runs, 'moto_complete_s'):.1f} s, over it **{over:.1f} s** "
        f"(per repetition: {each}; the difference of the medians: {apart:.1f} s): "
        f"{verdict(over <= DURABLE_TARGET_S)}\n"
        f"  - the agent's own part before the completion, close → verified (end detection, last "
        f"part, end-of-stream check re-reading {median(runs, 'reread_bytes') / MiB:.0f} MiB): "
        f"{median(runs, 'verified_s'):.1f} s\n"
        f"  - moto's completion of the agent's own upload, as the agent timed it: "
        f"{median(runs, 'agent_complete_s'):.1f} s; close → durable outside it (the agent's "
        f"whole own time): {median(runs, 'outside_complete_s'):.1f} s"
    )


def _targets(work: dict[str, Any]) -> str:
    lines = []
    if "bulk" in work:
        lines.extend(bulk_targets(work["bulk"]))
    if "durable" in work:
        lines.append(durable_target(work["durable"]))
    return (
        "## Targets (issue 12)\n\nMedians of this run; the details are in the sections below.\n\n"
        + "\n".join(lines)
    )


# ---------------------------------------------------------------------- 1. bulk


def _gib(entry: dict[str, Any]) -> float:
    return float(entry["size_bytes"]) / GiB


def _rate(entry: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    return f"{entry['size_bytes'] / MiB / median(runs, 'complete_s'):.0f}"


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / MiB:.0f}"


def _bulk(bulk: dict[str, Any]) -> str:
    sizes = ", ".join(size(e["size_bytes"]) for e in bulk["sizes"])
    parts = [
        f"""## 1. Bulk: a finished file ({sizes})

streamup: the file (random bytes) arrives in the watched folder, *moved in* (written beside the
folder on the same filesystem and synced before the clock starts, then renamed in: a finished
file, as `aws s3 cp` reads one) or *copied in* (copied by the benchmark while the clock runs:
the copy, and the kernel writing its pages back while moto writes its own temporary files, are
inside the time); the time runs from the rename or the start of the copy to `stream.completed`.
Peers: `aws s3 cp` / `rclone copyto` of the same file. The server ceiling: moto accepting the
same bytes as 8 MiB UploadParts whose bodies are already in memory, N in flight on a thread pool
(one boto3 client per thread, no checksum, `UNSIGNED-PAYLOAD`); its time is the UploadParts
alone (no create, no completion), so a tool's *% of ceiling* (the ceiling's time over the tool's
whole time) counts everything the tool does beyond sending bytes. The ceiling is measured before
streamup's copies and again after them, and its figure is the median of both (for the number in
flight that does best): moto's speed drifts as its process ages over a run, and the ceiling
brackets the copies it is compared with. streamup runs first in the
proof mode the start-up probe chooses on moto (`S3_INTEGRITY_MODE=auto`), the file moved in, for
each setting; then each forced mode, and the file copied in, at the fastest of those settings.
Repetitions: {bulk["reps"]} of each."""
    ]
    for entry in bulk["sizes"]:
        parts.append(_bulk_size(entry))
        if "profile" in entry:
            parts.append(_profile(entry["profile"]))
    return "\n\n".join(parts)


def _ceiling_rows(entry: dict[str, Any]) -> list[list[str]]:
    ceiling, rows = entry["ceiling"], []
    for in_flight, runs in ceiling["by_in_flight"].items():
        rate = ceiling["size_bytes"] / MiB / median(runs, "accept_s")
        share = ceiling["best_accept_s"] / median(runs, "accept_s")
        rows.append([
            f"server ceiling: {in_flight} in-memory UploadParts in flight", "",
            spread(runs, "accept_s"), f"{rate:.0f}", f"{share:.0%}", "",
            f"{median(runs, 'moto_cpu_s'):.1f}", "", "", "", "",
        ])  # fmt: skip
    return rows


def _bulk_rows(entry: dict[str, Any]) -> list[list[str]]:
    gib, rows = _gib(entry), _ceiling_rows(entry)
    for config in entry["streamup"]:
        runs = config["runs"]
        rows.append([
            label_of(config), str(runs[0].get("integrity_proof", "")),
            spread(runs, "complete_s"), _rate(entry, runs),
            f"{ceiling_share(entry, runs):.0%}", f"{median(runs, 'cpu_s') / gib:.2f}",
            f"{median(runs, 'moto_cpu_s'):.1f}", spread(runs, "last_part_s"),
            spread(runs, "verified_s"), f"{_after_verified(runs):.1f}",
            f"{_mib(median(runs, 'reread_bytes'))} / {_mib(median(runs, 'skipped_bytes'))}",
        ])  # fmt: skip
    for name, peer in entry["peers"].items():
        runs = peer["runs"]
        rows.append([
            f"{name} ({peer['defaults']})", "", spread(runs, "complete_s"), _rate(entry, runs),
            f"{ceiling_share(entry, runs):.0%}", f"{median(runs, 'cpu_s') / gib:.2f}",
            f"{median(runs, 'moto_cpu_s'):.1f}", "", "", "", "",
        ])  # fmt: skip
    return rows


def _after_verified(runs: list[dict[str, Any]]) -> float:
    return float(statistics.median(r["complete_s"] - r["verified_s"] for r in runs))


def _bulk_ratios(entry: dict[str, Any]) -> list[str]:
    best = fastest(entry)
    best_s, settings = median(best["runs"], "complete_s"), best["settings"]
    ratios = [
        f"- Fastest streamup setting in the probed mode: "
        f"UPLOAD_CONCURRENCY={settings['UPLOAD_CONCURRENCY']}, "
        f"CHUNK_SIZE_BYTES={settings['CHUNK_SIZE_BYTES']} ({best_s:.1f} s)."
    ]
    for config in [best, *forced(entry)]:
        config_s, config_cpu = median(config["runs"], "complete_s"), median(config["runs"], "cpu_s")
        for name, peer in entry["peers"].items():
            peer_s, peer_cpu = median(peer["runs"], "complete_s"), median(peer["runs"], "cpu_s")
            ratios.append(
                f"- {label_of(config)} / {name}: wall time {config_s / peer_s:.2f}x, "
                f"CPU {config_cpu / peer_cpu:.2f}x."
            )
    return ratios


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def _complete_table(entry: dict[str, Any]) -> str:
    moto = entry["moto_complete"]
    reps = min(len(kind["runs"]) for kind in moto["kinds"].values())
    rows = []
    for kind in moto["kinds"].values():
        runs = kind["runs"]
        rows.append([
            kind["label"], spread(runs, "complete_s"), f"{median(runs, 'moto_cpu_s'):.1f}",
            runs[0]["checked"],
        ])  # fmt: skip
    header = ["checksum asked for", "CompleteMultipartUpload alone, s", "moto CPU, s",
              "whole-object checksum moto reports"]  # fmt: skip
    return (
        f"moto's own CompleteMultipartUpload of this file ({size(moto['part_bytes'])} parts sent "
        f"first, untimed; then the completion alone; {_times(reps)} each, interleaved):"
        f"\n\n{table(header, rows)}"
    )


def _bulk_size(entry: dict[str, Any]) -> str:
    header = ["tool", "proof", "to complete object, s", "MiB/s", "% of ceiling",
              "CPU s per GiB", "moto CPU, s", "last part, s", "verified, s",
              "verified → complete, s", "re-read / skipped, MiB"]  # fmt: skip
    copy_s = median(fastest(entry)["runs"], "copy_s")
    return f"""### {size(entry["size_bytes"])}

{table(header, _bulk_rows(entry))}

*proof*: the metadata's `integrity_proof`. *last part*: the last `part.uploaded` (the copy itself
takes ~{copy_s:.1f} s); *verified*: the end-of-stream check done (each part the running SHA-256
took in and that was read after the file's last change is skipped; the others are re-read and
compared by CRC32C), the tail sent. *re-read / skipped*: the `stream.checked` event's
`reread_bytes` / `skipped_bytes`. *verified → complete* (median of the differences) is
CompleteMultipartUpload, the object's proof (HeadObject), ffprobe and the metadata PUT: compare
it with moto's completion alone, below.

{chr(10).join(_bulk_ratios(entry))}

{_complete_table(entry)}"""


# ---------------------------------------------------------------------- the profile


def _share_rows(pairs: list[tuple[str, int]], samples: int) -> list[list[str]]:
    return [[name, f"{n / samples:.0%}"] for name, n in pairs]


def _profile_of(who: str, found: dict[str, Any]) -> str:
    samples = max(1, found["samples"])
    groups = [(f"{t['group']} ({t['threads']} threads)" if t["threads"] > 1 else t["group"],
               t["samples"]) for t in found["threads"][:8]]  # fmt: skip
    doing = table(
        ["what the samples were doing", "share of samples"],
        _share_rows(found["categories"], samples),
    )
    threads = table(["thread", "share of samples"], _share_rows(groups, samples))
    own = [[f"`{name}`", f"{n / samples:.0%}"] for name, n in found["own"]]
    inside = [[f"`{name}`", f"{n / samples:.0%}"] for name, n in found["inside"]]
    seconds, rate = found["seconds"], found["rate_hz"]
    return f"""**{who}**: {found["samples"]} samples at {rate} Hz in {seconds:.1f} s.

{doing}

{threads}

{table(["function (own samples)", "share"], own)}

{table([f"{found['package']} function (samples inside it and what it calls)", "share"], inside)}"""


def _profile(prof: dict[str, Any]) -> str:
    s, run = prof["settings"], prof["run"]
    mode = s.get("S3_INTEGRITY_MODE", "auto")
    return f"""### Profile: where the time goes ({size(prof["size_bytes"])})

py-spy, attached during one more copy of the file (not among the figures above), with
S3_INTEGRITY_MODE={mode}, UPLOAD_CONCURRENCY={s["UPLOAD_CONCURRENCY"]},
CHUNK_SIZE_BYTES={s["CHUNK_SIZE_BYTES"]}: `py-spy record --rate 100 --threads --nonblocking
--format raw`, on the agent and on moto. The copy took {run["complete_s"]:.1f} s
({run["cpu_s"]:.1f} CPU-s agent, {run["moto_cpu_s"]:.1f} CPU-s moto). Time in C (hashing,
copies, socket writes) is charged to the Python line that called it. Threads py-spy takes for
idle are not sampled, but threads waiting for the GIL are: the shares are of samples, not of
CPU time. *What the samples were doing* is the first match walking each stack from its leaf
(`bench/profiling.py`). The raw stacks are in `bench/results/profile-*.txt` (not committed).

{_profile_of("agent", prof["agent"])}

{_profile_of("moto", prof["moto"])}"""


# ---------------------------------------------------------------------- 2. durable


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
            spread(runs, "moto_complete_s"), spread(runs, "over_moto_complete_s"),
            spread(runs, "agent_complete_s"), spread(runs, "outside_complete_s"),
            f"{_mib(median(runs, 'reread_bytes'))} / {_mib(median(runs, 'skipped_bytes'))}",
            *peers,
        ])  # fmt: skip
    header = ["size", "writing, s", "in S3 at close", "close → verified, s",
              "verified → durable, s", "close → durable, s", "moto's completion alone, s",
              "close → durable minus it, s", "moto's completion for the agent, s",
              "close → durable outside it, s", "re-read / skipped, MiB",
              *(f"{label} after the end, s (x streamup)" for label in labels)]  # fmt: skip
    rate = durable["rate_bytes_s"] / MiB
    return f"""## 2. Time to durable: a recording written at {rate:.0f} MiB/s

Seconds from the writer's close to the complete object with its metadata (proof mode
{durable.get("mode", "?")}, chosen by the start-up probe). After each recording, moto's own
CompleteMultipartUpload of that object is timed alone: the same bytes in the same parts (from
the metadata's `chunks`), with the COMPOSITE CRC32C streamup asks for; *minus it* is the
difference in the same repetition, median over the repetitions. The peer is "wait for the end,
then `aws s3 cp`": its whole upload of the finished file counts from the same close, with
awscli's default CRC32 checksums and without. Repetitions: {durable["reps"]} of each size.

{table(header, rows)}

*close → verified* is the agent's own work after the close: noticing the end (~1 s), sending
the last part and the end-of-stream check (*re-read / skipped*: a part is skipped only when it
was read after the file's last change; a recording changes until its close, after every part
but the last was read, so its parts are all read again). *verified → durable* is moto's
CompleteMultipartUpload (in time that grows with the object), the object's proof, ffprobe and
the metadata PUT. *moto's completion for the agent* is the agent's own CompleteMultipartUpload
call as it timed it (the `server_complete_s` of its `stream.completed` line); *outside it* is
close → durable without that call: all the agent's own time, which moto's variance does not
touch. The two completions of moto differ in when they run: the agent's right after the
writer's close, the alone one some seconds later. Not because of the recording's pages still
being written back: `bench/writeback.py` times moto's completion of 2 GiB with and without a
same-size file just written, interleaved, and finds no difference (11.3 s and 11.2 s, medians
of 3, on 2026-12-01). At 2 GiB moto's completion of one and the same object varies by seconds
from one run to the next. Of the agent's own time after the completion, most is its first
checkpoint there (the `s3_completed` status): its fsync (SQLite `synchronous=FULL`) comes right
after moto wrote the whole object to the same ext4 disk, and ext4's ordered journal commits wait
for that data; timed step by step on two more 2 GiB recordings: 1.1 and 1.5 s, against 4-6 ms
for the checkpoint after it."""


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
        entry = work["bulk"]["sizes"][0]
        lines.append("# 1. bulk: streamup (the file is then copied into WATCH_DIR)")
        lines.extend(c["command"] for c in entry["streamup"])
        lines.extend(p["command"] for p in entry["peers"].values())
        lines.append("# 1. server ceiling and moto's completion alone: boto3 in bench/calibrate.py")
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
The streamup settings of workload 1 are the same for every size (the forced modes run at each
size's fastest setting).

```sh
{chr(10).join(lines)}
```"""


def main(argv: list[str]) -> int:
    """`report.py [RUN_JSON [DOC]]`: render a run's results again (after editing this file)."""
    root = Path(__file__).resolve().parent.parent
    source = Path(argv[0]) if argv else root / "bench" / "results" / "run.json"
    doc = Path(argv[1]) if len(argv) > 1 else root / "docs" / "benchmarks.md"
    doc.write_text(render(json.loads(source.read_text())))
    print(f"wrote {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
