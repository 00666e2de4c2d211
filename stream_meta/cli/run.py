"""``stream-meta run``: build the daemon from its config, serve its endpoints, run it until stopped."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
from pathlib import Path

from stream_meta import __version__

log = logging.getLogger("stream_meta")


def finish(summary: dict, summary_json: Path | None) -> None:
    from stream_meta.daemon.stats import format_summary

    print(format_summary(summary))
    if summary_json is not None:
        summary_json.parent.mkdir(parents=True, exist_ok=True)
        summary_json.write_text(json.dumps(summary, indent=2) + "\n")
        log.info("summary written to %s", summary_json)


def cmd_run(args: argparse.Namespace) -> int:
    from stream_meta.daemon.config import load_config
    from stream_meta.daemon.logs import setup_logging

    flags = {k: v for k, v in vars(args).items() if k not in ("command", "fresh")}
    cfg = load_config(flags)
    setup_logging(cfg.log_format, cfg.log_level)
    if getattr(args, "fresh", False):
        from stream_meta.daemon.checkpoint import move_aside

        moved = move_aside(cfg.checkpoint_dir)
        if moved is not None:
            log.warning("--fresh: moved %s aside to %s; starting over", cfg.checkpoint_dir, moved)
    summary = run_daemon(cfg)
    finish(summary, cfg.summary_json)
    return 0


def run_daemon(cfg) -> dict:
    """Builds the service from ``cfg``, serves its endpoints, runs it until stopped."""
    from prometheus_client import CollectorRegistry

    from stream_meta.daemon.app import build_service, check_local_settings, configure_torch
    from stream_meta.daemon.http import HealthServer

    configure_torch(cfg)
    # Operator mistakes first (checkpoint directory, input file, metrics port and host), so each
    # is the one line printed, before anything is logged, built or connected.
    check_local_settings(cfg)
    registry = CollectorRegistry()
    server = None
    if cfg.metrics_port is not None:
        server = HealthServer(registry, cfg.metrics_host, cfg.metrics_port, lambda: False, lambda: False)
    log.info("stream-meta %s starting with %s", __version__, json.dumps(cfg.masked(), sort_keys=True))
    try:
        service = build_service(cfg, registry)
    except BaseException:
        if server is not None:
            server.close()
        raise
    if server is not None:
        server.alive, server.ready = service.alive, service.ready
        server.start()
        log.info("metrics on %s/metrics (health: /healthz, /readyz)", server.url)
    def on_signal(signum: int, _frame) -> None:
        service.request_stop(signal.Signals(signum).name)
        # A graceful stop (finish the record, final checkpoint) that hangs, e.g. on an
        # unreachable broker while flushing dead letters, must not keep the process
        # alive forever: exit non-zero; the last checkpoint is intact.
        watchdog = threading.Timer(cfg.shutdown_timeout_s, _shutdown_timed_out, (cfg.shutdown_timeout_s,))
        watchdog.daemon = True
        watchdog.start()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return service.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if server is not None:
            server.stop()


def _shutdown_timed_out(timeout_s: float) -> None:
    log.error("graceful stop did not finish within %.0fs (--shutdown-timeout-s): exiting with code 3", timeout_s)
    logging.shutdown()
    os._exit(3)
