"""``stream-meta broker``: the bundled Kafka-compatible test broker, in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import socket
import sys

from stream_meta.errors import StreamMetaError


def _check_port_free(port: int) -> None:
    """A port already taken fails here in one line, not as Tansu's exit code."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise StreamMetaError(
                f"port {port} on 127.0.0.1 is not free ({exc.strerror}); pick another --port (0 = any free)"
            ) from None


def cmd_broker(args: argparse.Namespace) -> int:
    from stream_meta.data.local_broker import LocalBroker, free_port

    port = args.port or free_port()
    _check_port_free(port)

    def on_term(signum: int, _frame) -> None:  # SIGTERM stops it like Ctrl-C does
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    broker = LocalBroker(port)
    try:
        broker.start()
        # The only line on stdout, so a script can read the address.
        print(f"bootstrap {broker.bootstrap}", flush=True)
        print(f"Kafka-compatible test broker (Tansu, in memory) listening on {broker.bootstrap}; "
              "Ctrl-C stops it and its data is gone", file=sys.stderr, flush=True)
        code = broker.proc.wait()
        raise StreamMetaError(f"the broker exited on its own with code {code}")
    except KeyboardInterrupt:
        return 0
    finally:
        broker.stop()
        signal.signal(signal.SIGTERM, previous)
