"""Command line: `streamup run | status | demo`. Logging is set up here and nowhere else."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from typing import Any

import structlog

from streamup import __version__
from streamup.errors import StreamupError

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
    ("--state-dir", str, "embedded checkpoint store folder (STATE_DIR)"),
    ("--ffprobe-path", str, "ffprobe binary (FFPROBE_PATH)"),
    ("--prom-port", int, "metrics port, 0 = off (PROM_PORT)"),
    ("--prom-host", str, "metrics bind address (PROM_HOST)"),
    ("--log-level", str, "DEBUG, INFO, WARNING, ERROR (LOG_LEVEL)"),
]


def configure_logging(level: str = "INFO", *, json_logs: bool | None = None) -> None:
    """Structured logs: JSON lines when not on a terminal, readable lines on one."""
    if json_logs is None:
        json_logs = not sys.stderr.isatty()
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
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
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
        "demo", help="the whole pipeline on this machine, nothing configured"
    )
    demo.add_argument("--seconds", type=float, default=8.0, help="length of the demo recording")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "status":
            return _status(args)
        from streamup.demo import run_demo

        configure_logging("WARNING")
        return asyncio.run(run_demo(seconds=args.seconds))
    except StreamupError as exc:
        print(f"streamup: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = [flag[2:].replace("-", "_") for flag, _, _ in _RUN_FLAGS]
    return {name: getattr(args, name, None) for name in names}


def _run(args: argparse.Namespace) -> int:
    from streamup.settings import load_settings

    settings = load_settings(_overrides(args))
    configure_logging(settings.log_level)
    structlog.get_logger("streamup").info("agent.config", **settings.redacted())
    return asyncio.run(_serve(settings))


async def _serve(settings: Any) -> int:
    from streamup.service import Agent

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals_seen = 0

    def on_signal() -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen > 1:
            # A second signal: leave now. Checkpoints are consistent at every instant anyway.
            os._exit(130)
        structlog.get_logger("streamup").info("agent.stopping")
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await Agent(settings).run(stop)
    return 0


def _status(args: argparse.Namespace) -> int:
    from streamup.report import collect, render
    from streamup.service import make_store
    from streamup.settings import load_settings

    settings = load_settings({"state_dir": args.state_dir})

    async def read() -> dict[str, object]:
        store = make_store(settings, exclusive=False)
        await store.open()
        try:
            return await collect(store)
        finally:
            await store.close()

    doc = asyncio.run(read())
    print(json.dumps(doc, indent=2) if args.json else render(doc))
    return 0
