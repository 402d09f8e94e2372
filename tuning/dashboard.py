"""`python -m tuning.dashboard`: optuna-dashboard on a study's storage, with its artifacts.

Listens on 127.0.0.1 unless told otherwise: the dashboard can delete studies and has no login.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tuning.cli import OneLineParser, configure_logging, fail, positive_int, study_name
from tuning.errors import UsageError
from tuning.storage import artifact_store, default_storage, mask_url, open_storage


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="python -m tuning.dashboard",
                           description="Browse studies live in optuna-dashboard.")
    parser.add_argument("--study", default="mnist", type=study_name,
                        help="study whose default storage to open (default mnist)")
    parser.add_argument("--storage", help="storage URL (default: sqlite:///studies/<study>.db)")
    parser.add_argument("--artifacts", type=Path,
                        help="artifact directory (default: ./artifacts or $TUNING_ARTIFACTS)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=positive_int, default=8080, help="port (default 8080)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    url = args.storage or default_storage(args.study)
    try:
        storage = open_storage(url, heartbeat=False)
        store = artifact_store(args.artifacts)
    except UsageError as exc:
        return fail(str(exc))
    from optuna_dashboard import run_server

    print(f"optuna-dashboard for {mask_url(url)} on http://{args.host}:{args.port}/",
          file=sys.stderr, flush=True)
    try:
        run_server(storage, host=args.host, port=args.port, artifact_store=store)
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
