"""`python -m tuning.dashboard`: optuna-dashboard on a study's storage, with its artifacts.

Listens on 127.0.0.1 unless told otherwise: the dashboard can delete studies and has no login.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

if __name__ == "__main__":
    # `python -m tuning.dashboard` runs as `tuning dashboard` does, before the imports below (which
    # load torch for seconds): a Ctrl-C meanwhile ends in one line, not a traceback.
    from tuning.command import run_module

    sys.exit(run_module("dashboard"))

from pathlib import Path

from tuning.cli import (
    OneLineParser,
    add_storage_arguments,
    add_verbosity_arguments,
    configure_logging,
    fail,
    positive_int_up_to,
    storage_url,
)
from tuning.errors import UsageError, shorten
from tuning.storage import existing_artifact_store, mask_url, open_storage, sample_study_hint


def build_parser(prog: str = "python -m tuning.dashboard") -> OneLineParser:
    parser = OneLineParser(prog=prog,
                           description="Browse studies live in optuna-dashboard.")
    add_storage_arguments(parser, "study whose default storage to open (default mnist); "
                                  "with --storage, a study that must exist there")
    parser.add_argument("--artifacts", type=Path,
                        help="artifact directory (default: ./artifacts or $TUNING_ARTIFACTS)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=positive_int_up_to(65535), default=8080,
                        help="port (default 8080)")
    add_verbosity_arguments(parser)
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m tuning.dashboard") -> int:
    args = build_parser(prog).parse_args(argv)
    configure_logging(args.quiet, args.verbose)
    study = args.study or "mnist"
    url = storage_url(args.storage, study)
    try:
        try:
            storage = open_storage(url, heartbeat=False)
        except UsageError as exc:  # no database file, or a server that does not answer
            raise type(exc)(f"{exc}{sample_study_hint(study, url)}") from None
        names = [s.study_name for s in storage.get_all_studies()]
        if args.study is not None and args.study not in names:
            raise UsageError(f"study {args.study!r} does not exist in {mask_url(url)}"
                             + (f" (it has: {', '.join(sorted(names))})" if names else ""))
        store = existing_artifact_store(args.artifacts)
        family = check_can_listen(args.host, args.port)
    except UsageError as exc:
        return fail(exc)
    from optuna_dashboard import wsgi

    try:
        server = _server(args.host, args.port, family, wsgi(storage, artifact_store=store),
                         log_requests=args.verbose)
    except OSError as exc:  # taken between the check and the bind
        return fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror}")
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"optuna-dashboard for {mask_url(url)} on http://{shown_host}:{args.port}/ "
          "(Ctrl-C to stop)", file=sys.stderr, flush=True)
    stopped_by = serve_until_stopped(server)
    if stopped_by is None:
        return 0
    print(f"stopped by {signal.Signals(stopped_by).name}", file=sys.stderr)
    return 128 + stopped_by


def _server(host: str, port: int, family: socket.AddressFamily, app,
            log_requests: bool) -> WSGIServer:
    class Handler(WSGIRequestHandler):
        def address_string(self) -> str:  # the client's address, without a reverse lookup
            return self.client_address[0]

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            if log_requests:
                super().log_request(code, size)

    class Server(WSGIServer):
        address_family = family

    return make_server(host, port, app, Server, Handler)


def serve_until_stopped(server: WSGIServer) -> int | None:
    """Serve until SIGINT, SIGTERM or SIGHUP; the signal that stopped it (None if it ended by
    itself).

    The signal is not raised as KeyboardInterrupt: one arriving while a request is handled
    would be caught by wsgiref's handler, which answers 500 and serves on. It asks the server
    to stop after the request instead; a second one ends the process at once (a request that
    hangs on the database).
    """
    stopped: list[int] = []

    def on_signal(signum, frame):
        if stopped:
            os._exit(128 + signum)
        stopped.append(signum)
        # shutdown() waits for serve_forever to return: from another thread, not this one.
        threading.Thread(target=server.shutdown, daemon=True).start()

    # A closed terminal (SIGHUP) too, unless it is ignored (nohup).
    previous = {sig: signal.signal(sig, on_signal)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
                if signal.getsignal(sig) != signal.SIG_IGN}
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.server_close()
    return stopped[0] if stopped else None


def check_can_listen(host: str, port: int) -> socket.AddressFamily:
    """UsageError where the server could not listen on `host`:`port` (in use, no such address),
    said before the dashboard announces itself; an empty host, which would listen on every
    address of the machine, is refused: give 0.0.0.0 to mean that. The address's family."""
    if not host.strip():
        raise UsageError("--host is empty; give an address (127.0.0.1 for this machine only, "
                         "0.0.0.0 for every address: the dashboard can delete studies)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UsageError(f"--host {shorten(host, 60)!r} is not an address here: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            probe.bind(address)
        except OSError as exc:
            raise UsageError(f"cannot listen on {shorten(host, 60)}:{port}: {exc.strerror}"
                             ) from None
    return family

