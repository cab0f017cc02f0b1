"""Command line: `streamup run | status | demo`. Logging is set up here and nowhere else."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, TextIO

import structlog

from streamup import __version__
from streamup.errors import ConfigError, StreamupError
from streamup.memory import raise_open_file_limit, tune_malloc
from streamup.ops.systemd import supervise

if TYPE_CHECKING:
    from rich.console import Console

    from streamup.settings import Settings

_RUN_FLAGS: list[tuple[str, type, str]] = [
    ("--watch-dir", str, "folder to watch (WATCH_DIR)"),
    ("--watch-extensions", str, "comma-separated extensions (WATCH_EXTENSIONS)"),
    ("--chunk-size-bytes", int, "base part size in bytes (CHUNK_SIZE_BYTES)"),
    ("--stream-timeout-seconds", float, "idle time that ends a stream (STREAM_TIMEOUT_SECONDS)"),
    ("--scan-interval-seconds", float, "period of the full folder scan (SCAN_INTERVAL_SECONDS)"),
    ("--upload-concurrency", int, "parts in flight (UPLOAD_CONCURRENCY)"),
    ("--s3-endpoint-url", str, "S3-compatible endpoint (S3_ENDPOINT_URL)"),
    ("--s3-bucket-name", str, "bucket (S3_BUCKET_NAME)"),
    ("--s3-region-name", str, "region (S3_REGION_NAME)"),
    (
        "--s3-integrity-mode",
        str,
        "auto, checksum, reported, content_md5, etag, none (S3_INTEGRITY_MODE)",
    ),
    ("--state-dir", str, "embedded checkpoint store folder (STATE_DIR)"),
    ("--ffprobe-path", str, "ffprobe binary (FFPROBE_PATH)"),
    ("--prom-port", int, "metrics port, 0 = off (PROM_PORT)"),
    ("--prom-host", str, "metrics bind address (PROM_HOST)"),
    ("--log-level", str, "DEBUG, INFO, WARNING, ERROR (LOG_LEVEL)"),
]


def configure_logging(
    level: str = "INFO", *, json_logs: bool | None = None, console: Console | None = None
) -> None:
    """Structured logs: JSON lines when not on a terminal, readable lines on one.

    With a `console` (the live progress board's), log lines are printed through it, so they
    scroll above the board instead of tearing it.
    """
    if json_logs is None:
        json_logs = not sys.stderr.isatty()
    out: TextIO = sys.stderr
    if console is not None:
        from streamup.ops.progress import log_file_for

        out = log_file_for(console)
    renderer: Any = (
        structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamup", description="Ship video recordings to S3 while they are being written."
    )
    parser.add_argument("--version", action="version", version=f"streamup {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="watch, upload, finalize, resume")
    for flag, kind, text in _RUN_FLAGS:
        run.add_argument(flag, type=kind, help=text)
    status = commands.add_parser("status", help="every stream the checkpoint store knows")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--state-dir", type=str, help="(STATE_DIR)")
    demo = commands.add_parser(
        "demo",
        help="the whole pipeline on this machine, nothing configured "
        "(needs pip install 'streamup[demo]')",
    )
    demo.add_argument("--seconds", type=float, default=8.0, help="length of the demo recording")
    return parser


def main(argv: list[str] | None = None) -> int:
    # Until the event loop takes the signals over, a SIGTERM during start-up (nothing to save
    # yet) is a clean exit, not death by signal.
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(0))
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "status":
            return _status(args)
        from streamup.ops.demo import run_demo

        configure_logging("WARNING")
        return asyncio.run(run_demo(seconds=args.seconds))
    except ConfigError as exc:
        print(f"streamup: error: {exc}", file=sys.stderr)
        return 2
    except StreamupError as exc:  # e.g. `status` cannot reach the checkpoint store
        print(f"streamup: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = [flag[2:].replace("-", "_") for flag, _, _ in _RUN_FLAGS]
    return {name: getattr(args, name, None) for name in names}


def _run(args: argparse.Namespace) -> int:
    from streamup.settings import load_settings

    settings = load_settings(_overrides(args))
    tune_malloc()
    raise_open_file_limit()
    console = None
    if sys.stderr.isatty():
        from streamup.ops.progress import terminal_console

        console = terminal_console(sys.stderr)
    configure_logging(settings.log_level, console=console)
    structlog.get_logger("streamup").info("agent.config", **settings.redacted())
    return asyncio.run(_serve(settings, console))


async def _serve(settings: Settings, console: Console | None = None) -> int:
    from streamup.service import Agent

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            if console is not None:
                console.show_cursor(True)  # the board hid it; os._exit skips its clean-up
            # A second signal: leave now. Checkpoints are consistent at every instant anyway.
            os._exit(130)
        structlog.get_logger("streamup").info("agent.stopping")
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    agent = Agent(settings)
    board: asyncio.Task[None] | None = None
    if console is not None:
        from streamup.ops.progress import show_progress

        board = asyncio.create_task(show_progress(agent.snapshot, console))
    # Under systemd (Type=notify): READY=1, WATCHDOG=1, STOPPING=1; elsewhere it returns at once.
    notifier = asyncio.create_task(
        supervise(agent.ready, agent.stopping, f"watching {settings.watch_dir}")
    )
    try:
        await agent.run(stop)
    finally:
        for task in (board, notifier):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    return 0


def _status(args: argparse.Namespace) -> int:
    from datetime import datetime

    from streamup.checkpoint.sqlite import DB_NAME
    from streamup.ops.report import collect, empty_document, render
    from streamup.s3.bandwidth import describe as describe_bandwidth
    from streamup.seams import make_store
    from streamup.settings import load_settings

    # Looking must change nothing: no WATCH_DIR, no STATE_DIR, no database is created.
    settings = load_settings({"state_dir": args.state_dir}, prepare_watch_dir=False)
    store_name = "sqlite" if settings.redis_url is None else "redis"
    bandwidth = describe_bandwidth(settings.bandwidth, datetime.now())

    async def read() -> dict[str, object]:
        if store_name == "sqlite" and not (settings.state_dir / DB_NAME).is_file():
            return empty_document(store_name, str(settings.watch_dir))
        # Not exclusive: a running agent holds the lock; WAL lets this read beside its writes.
        store = make_store(settings, exclusive=False)
        await store.open()
        try:
            return await collect(store, watch_dir=str(settings.watch_dir))
        finally:
            await store.close()

    doc = asyncio.run(read())
    doc["bandwidth"] = bandwidth  # what the settings say now (the agent paces by the same)
    print(json.dumps(doc, indent=2) if args.json else render(doc))
    return 0
