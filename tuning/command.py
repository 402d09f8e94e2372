"""`tuning`: one command with a subcommand per job.

    tuning search --trials 100      create (or resume) a study and run it to its target
    tuning worker --study NAME      join an existing study from any host
    tuning report --study NAME      the study's report and its held-out test
    tuning dashboard --study NAME   optuna-dashboard on the study, with its checkpoints
    tuning export --study NAME      the best model as files: weights, config, programs, card
    tuning predict --model DIR IMG  classify image files with an exported model
    tuning studies                  the studies --study can name: files, and stored ones

`python -m tuning.search` and the others keep working: each subcommand is that module's main.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tuning import __version__, catalog
from tuning.errors import EXIT_OK, EXIT_USAGE, StudyNotFound, UsageError, counted, shorten
from tuning.settings import setting
from tuning.signals import Interrupted

if TYPE_CHECKING:
    from tuning.cli import OneLineParser

SUBCOMMANDS = {
    "search": ("tuning.search", "create (or resume) a study and run it to its target"),
    "worker": ("tuning.worker", "join an existing study and run trials until its target"),
    "report": ("tuning.report", "write the study's report and evaluate its best trial"),
    "dashboard": ("tuning.dashboard", "browse the study live in optuna-dashboard"),
    "export": ("tuning.export", "write the best model: weights, config, programs, model card"),
    "predict": ("tuning.predict", "classify image files with an exported model"),
    "studies": (None, "list the studies --study can name: study files, and stored studies"),
}


def build_parser() -> OneLineParser:
    # tuning.cli imports Optuna: here, once a Ctrl-C is caught (`_guarded`), not at import.
    from tuning.cli import OneLineParser  # noqa: PLC0415

    parser = OneLineParser(
        prog="tuning", description="Hyperparameter search for PyTorch image classifiers.",
        epilog="subcommands:\n" + "\n".join(f"  {name:<10} {summary}"
                                            for name, (_, summary) in SUBCOMMANDS.items())
        + "\n\n`tuning SUBCOMMAND --help` shows a subcommand's flags.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"tuning {__version__}")
    parser.add_argument("subcommand", choices=SUBCOMMANDS, metavar="SUBCOMMAND",
                        help="one of: " + ", ".join(SUBCOMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the subcommand's flags")
    return parser


def list_studies(argv: list[str], prog: str = "tuning studies") -> int:
    """`tuning studies`, also `python -m tuning.studies`: one line per study file."""
    from tuning.cli import OneLineParser, fail  # noqa: PLC0415 - as in build_parser

    parser = OneLineParser(prog=prog, description="List the study files --study can name: the "
                           "built-in ones, and those in ./studies that override them; then the "
                           "studies in ./studies without a file, stored with their definition; "
                           "then those in --storage.")
    parser.add_argument("--storage", help="also list every study in this storage (a "
                                          "PostgreSQL URL, or sqlite:///path.db; default "
                                          "$TUNING_STORAGE), with its target")
    args, extra = parser.parse_known_args(argv)
    if extra:
        return fail(f"{prog} takes only --storage, got {' '.join(extra)[:60]!r}")
    from tuning.study_file import load_study_file  # noqa: PLC0415 - imports torch: only when needed

    entries = catalog.available()
    rows = []
    for entry in entries:
        try:
            settings = load_study_file(entry.path).settings
            what = (f"{settings.dataset}, {counted(settings.epochs, 'epoch')}, "
                    f"{settings.sampler} / {settings.pruner}")
        except UsageError as exc:
            what = f"invalid: {str(exc)[:120]}"
        rows.append((entry.name, entry.origin, what, str(entry.path)))
    url = args.storage or setting("TUNING_STORAGE")
    # A local database that --storage names too is listed once, with the storage's details.
    listed = _same_file(url)
    rows += [(name, "stored", what, str(path))
             for name, what, path in _stored_studies({entry.name for entry in entries})
             if listed is None or not path.samefile(listed)]
    in_storage = []
    if url:
        try:
            in_storage = _studies_in(url)
        except UsageError as exc:
            return fail(exc)
    rows += in_storage
    # Columns as wide as their longest entry (an image folder's path can be long).
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    for row in rows:
        print(" ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
              + f" {row[3]}")
    if url and not in_storage:  # else the listing would not tell it was looked at
        from tuning.storage import mask_url  # noqa: PLC0415 - as above

        print(f"no study in {mask_url(url)}")
    return EXIT_OK


def _same_file(url: str | None) -> Path | None:
    """The SQLite file a storage URL names, where it exists (else None)."""
    from tuning.storage import sqlite_path  # noqa: PLC0415 - as above

    try:
        path = sqlite_path(url) if url else None
    except Exception:  # not a URL: the listing of --storage says so
        return None
    return path if path is not None and path.is_file() else None


def _optuna_database(path: Path) -> bool:
    """Whether `path` is an Optuna database, asked read-only: opening another program's file
    as a storage would write Optuna's tables into it, and a listing changes nothing."""
    import sqlite3  # noqa: PLC0415 - only here

    from tuning.storage import optuna_tables  # noqa: PLC0415 - as above

    try:
        return optuna_tables(path) == {"studies", "version_info"}
    except sqlite3.OperationalError:  # cannot be opened here (a read-only folder): say why
        return True
    except sqlite3.Error:  # not a database, or damaged
        return False


def _stored_studies(known: set[str]) -> list[tuple[str, str, Path]]:
    """The studies in ./studies/NAME.db without a study file of that name (named after their
    data): `--study NAME` resumes them from the definition stored in them."""
    from tuning.storage import default_storage  # noqa: PLC0415 - as above
    from tuning.study import load_existing, stored_definition  # noqa: PLC0415

    found = []
    for path in sorted(catalog.LOCAL_DIR.glob("*.db")):
        if path.stem in known or not _optuna_database(path):
            continue
        try:
            settings, _ = stored_definition(load_existing(path.stem, default_storage(path.stem),
                                                          heartbeat=False))
        except StudyNotFound:  # another program's database: not a study to list
            continue
        except Exception as exc:  # noqa: BLE001 - unreadable here (a read-only folder, damage)
            found.append((path.stem, f"cannot be read: {shorten(str(exc), 150)}", path))
            continue
        found.append((path.stem, f"{_data_shown(settings.dataset)}, "
                      f"{counted(settings.epochs, 'epoch')}, {settings.sampler} / "
                      f"{settings.pruner}", path))
    return found


def _data_shown(dataset: str) -> str:
    """A stored study's data set, its images' path marked where they are not on this host
    (moved: `--dataset` gives their new place)."""
    from tuning.study import images_missing  # noqa: PLC0415 - as above

    return f"{dataset} (not found here)" if images_missing(dataset) else dataset


def _studies_in(url: str) -> list[tuple[str, str, str, str]]:
    """A row for every study in the storage at `url` (which must hold Optuna's tables: a
    listing creates nothing), tuning's own with their settings and target."""
    import optuna  # noqa: PLC0415 - as above

    from tuning.cli import FINISHED  # noqa: PLC0415
    from tuning.storage import mask_url, open_storage  # noqa: PLC0415

    storage = open_storage(url, heartbeat=False)
    rows = []
    for summary in optuna.get_all_study_summaries(storage):
        attrs = summary.user_attrs
        settings = attrs.get("settings")
        finished = len(optuna.load_study(study_name=summary.study_name, storage=storage)
                       .get_trials(deepcopy=False, states=FINISHED))
        what = (f"{_data_shown(settings['dataset'])}, {counted(settings['epochs'], 'epoch')}, "
                f"{settings['sampler']} / {settings['pruner']}, {finished} of target "
                f"{attrs.get('target_trials')} finished" if settings
                else "not made by tuning search")
        rows.append((summary.study_name, "stored", what, mask_url(url)))
    return rows


def main(argv: list[str] | None = None) -> int:
    """The `tuning` command."""
    argv = sys.argv[1:] if argv is None else argv
    named = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    return _guarded("tuning" + (f" {named}" if named else ""), lambda: _dispatch(argv))


def run_module(subcommand: str) -> int:
    """`python -m tuning.SUBCOMMAND`: `tuning SUBCOMMAND` under that name. Each such module
    calls it before its own imports, which load torch for seconds: a Ctrl-C then still ends
    in one line."""
    module = SUBCOMMANDS[subcommand][0]
    prog = f"python -m {module}"
    return _guarded(prog, lambda: importlib.import_module(str(module)).main(sys.argv[1:],
                                                                             prog=prog))


def _dispatch(argv: list[str]) -> int:
    parser = build_parser()
    if not argv:
        parser.error("give a subcommand: " + ", ".join(SUBCOMMANDS) + " (tuning --help)")
    args = parser.parse_args(argv)
    module, _ = SUBCOMMANDS[args.subcommand]
    if module is None:
        return list_studies(args.args)
    return importlib.import_module(module).main(args.args, prog=f"tuning {args.subcommand}")


_started: float | None = None


def run_started() -> float:
    """When this command began (time.monotonic()), before the imports that load torch for
    seconds: a --budget counts from there, as the user's watch does. Outside a command (a
    test, a library call): now."""
    return _started if _started is not None else time.monotonic()


def _guarded(prog: str, command: Callable[[], int]) -> int:
    """`command()`, with the ends every command shares."""
    global _started
    _started = time.monotonic()
    previous = _stop_on_termination()
    try:
        return _ended(prog, command)
    finally:
        _started = None
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _stop_on_termination() -> dict:
    """SIGTERM and SIGHUP (`timeout`, a scheduler, a closed terminal) raise as Ctrl-C does,
    where they would kill the process on the spot: what a command cleans up when stopped (an
    export's unfinished files, a report's empty folder) goes as it goes for Ctrl-C. A search
    or worker takes them over for its trials (tuning.signals). A signal ignored (nohup) stays
    ignored. Returns the handlers replaced."""
    def stop(signum, frame):
        raise Interrupted(signum)

    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) == signal.SIG_DFL:
            previous[signum] = signal.signal(signum, stop)
    return previous


def _ended(prog: str, command: Callable[[], int]) -> int:
    """`command()`, its common failures each one line and an exit status."""
    try:
        return command()
    except BrokenPipeError:
        # The reader went away (`tuning studies | head -1`): no traceback, and the status a
        # shell gives a program a closed pipe stopped (128 + SIGPIPE), not success: a search
        # cut short this way did not meet its target. Python would report the pipe again on
        # flushing stdout at exit; point it at nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except Interrupted as stopped:
        if "--launched" not in sys.argv:
            print(f"{prog}: stopped by {stopped}", file=sys.stderr)
        return stopped.exit_status
    except KeyboardInterrupt:
        # A Ctrl-C the command did not handle: it came before it took its signals over
        # (while torch imports, say). One line rather than a traceback; a trial that was
        # running is retried as a dead worker's is. A launched worker leaves it to its
        # launcher, which says it once for all of them.
        if "--launched" not in sys.argv:
            print(f"{prog}: stopped by SIGINT", file=sys.stderr)
        return 128 + signal.SIGINT
    except OSError as exc:
        if exc.errno != errno.ENAMETOOLONG:
            return _stopped_or_raise(prog)
        # A path given with a name longer than the file system allows (255 bytes): bad input,
        # met wherever the command first looks at that path, before it stores anything.
        print(f"error: a path given is too long for the file system (a name over 255 bytes): "
              f"{shorten(str(exc.filename or ''), 80)!r}", file=sys.stderr)
        return EXIT_USAGE
    except Exception:
        return _stopped_or_raise(prog)


def _stopped_or_raise(prog: str) -> int:
    """In an `except` block: the end of a command that was asked to stop and then failed (a
    second Ctrl-C raised inside the database driver, which wrapped it in errors of its own),
    as one line with the stop's status; any other error goes on up."""
    from tuning.signals import requested_stop  # noqa: PLC0415 - keeps startup light

    stop = requested_stop()
    if stop is None:
        raise  # noqa: PLE0704 - called only from an except block: re-raises its error
    print(f"{prog}: stopped by {stop}", file=sys.stderr)
    return stop.exit_status


if __name__ == "__main__":
    sys.exit(main())
