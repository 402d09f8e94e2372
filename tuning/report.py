"""`tuning report --study NAME`: which optimizer, which learning rate, how much
regularization, with the evidence; and the best configuration once on the held-out test set.

Writes `index.html` (self-contained: plotly.js is inlined, nothing is fetched), `summary.md`
with the same tables, `trials.csv`, and `test_metrics.json` when the held-out test ran.

This module is the command and `build_report`, which puts the report together from:
report_stats (what the numbers say), report_sections (one section per question),
report_history (importance, history, curves), report_figures (the plots), report_heldout (the
test set, and the tutorial baseline kept in the study) and report_render (HTML, Markdown, CSV).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # `python -m tuning.report` runs as `tuning report` does, before the imports below (which
    # load torch for seconds): a Ctrl-C meanwhile ends in one line, not a traceback.
    from tuning.command import run_module

    sys.exit(run_module("report"))

import json
from pathlib import Path

import optuna

from tuning.catalog import builtin_study_file
from tuning.cli import (
    OneLineParser,
    add_storage_arguments,
    add_verbosity_arguments,
    configure_logging,
    count_finished,
    fail,
    make_out_directory,
    remove_empty,
    storage_url,
)
from tuning.data import check_data_dir
from tuning.device import resolve_device
from tuning.errors import UsageError, shorten
from tuning.report_heldout import check_network_importable, held_out_test, study_arrays
from tuning.report_history import importance
from tuning.report_regularization import regularization
from tuning.report_render import Section, render_html, render_markdown, trials_csv
from tuning.report_sections import learning_rate, optimizers, overview
from tuning.report_stats import ALPHA, StudyView, p_text
from tuning.storage import existing_artifact_store, resolve_url
from tuning.study import (
    check_weights_match,
    load_existing,
    stored_definition,
    with_images_at,
)

# The tutorial's configuration, trained beside the best trial as the baseline of the test.
SEED_STUDY_FILE = builtin_study_file("seed")
METRICS_FILE = "test_metrics.json"
PARTIAL = ".partial"
"""How a report's file being written ends, until it replaces the file of that name."""


def build_report(study: optuna.Study, out: Path, device: str = "auto", artifacts=None,
                 with_test: bool = True, seed_file: Path = SEED_STUDY_FILE,
                 data_dir: Path | None = None, dataset: str | None = None) -> dict:
    """Write the report files for `study` into `out` (created where missing); returns the
    held-out test metrics.

    Bad input changes nothing stored: a user's network builder importable here, the test set
    (read from `data_dir`, default ./data), which must be the study's images, and the test's
    device are checked before `out` is
    created, and the folders it created are removed again, while empty, when bad input, a
    failure or a stop ends the report later. The data come first, so that data not found stop
    the report before it spends time on the rest.
    """
    settings, space = stored_definition(study)
    settings = with_images_at(settings, dataset)
    check_weights_match(study, settings)
    view = StudyView(study, study.get_trials(deepcopy=False), settings, space)
    if with_test and view.completed:
        check_network_importable(settings.network())
    arrays = study_arrays(study, settings, data_dir) if with_test and view.completed else None
    if arrays is not None:
        resolve_device(device)  # the test's device: held_out_test resolves it again to use it
    created = make_out_directory(out)
    try:
        # Repeats of one fixed configuration answer no question about optimizers, learning
        # rates or regularization: their overview gives the mean and spread.
        sections = [overview(view)] if view.fixed_configuration else [
            overview(view), optimizers(view), learning_rate(view), regularization(view),
            importance(view)]
        metrics: dict = {}
        if with_test:
            test = held_out_test(view, arrays, device, artifacts, seed_file)
            sections.append(test)
            metrics = getattr(test, "metrics", {})
        else:
            sections.append(Section("Held-out test", [
                "Not run: this report was made with --no-test. Without it, the best "
                "configuration is evaluated once on the test set, beside the tutorial's."]))
        title = f"Study {study.study_name}"
        files = {"index.html": render_html(title, sections),
                 "summary.md": render_markdown(title, sections),
                 "trials.csv": trials_csv(view)}
    except BaseException:  # bad input, a failure, or a stop (Ctrl-C, SIGTERM)
        remove_empty(created)
        raise
    if metrics:
        files[METRICS_FILE] = json.dumps(metrics, indent=1)
    write_whole(out, files, created)
    # Without a test there are no metrics to write; an earlier report's file would contradict
    # the "Not run" this one says.
    if not metrics:
        (out / METRICS_FILE).unlink(missing_ok=True)
    return metrics


def write_whole(out: Path, files: dict[str, str], created: list[Path]) -> None:
    """Write the report's files into `out` all or none: each goes to a temporary file first,
    and only once all are written do they replace an earlier report's. A write that fails (a
    full disk) removes what it wrote, and the folders made for it (`created`): an earlier
    report stays whole, and the same command runs again once there is room."""
    temporary = {name: out / f".{name}{PARTIAL}" for name in files}
    try:
        for name, text in files.items():
            temporary[name].write_text(text, encoding="utf-8")
        for name, path in temporary.items():
            path.replace(out / name)
    except BaseException as exc:  # a full disk, or a stop (Ctrl-C, SIGTERM) mid-write
        for path in temporary.values():
            path.unlink(missing_ok=True)
        remove_empty(created)
        if not isinstance(exc, OSError):
            raise
        raise UsageError(f"the report into {shorten(str(out), 200)!r} failed: "
                         f"{exc.strerror or exc}") from None


def check_out(out: Path) -> None:
    """Refuse an --out directory with other content than an earlier report, whose files this
    one replaces: its index.html would overwrite another (a web site's, say). Creates nothing."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {shorten(str(out), 200)!r} is a file, not a directory")
    # A report's file left half written (its writer killed mid-write) is no one else's.
    others = [path for path in out.iterdir() if not path.name.endswith(PARTIAL)] \
        if out.is_dir() else []
    if others and not all((out / name).is_file() for name in ("summary.md", "trials.csv")):
        raise UsageError(f"--out {shorten(str(out), 200)!r} is not empty and holds no earlier "
                         "report (no summary.md and trials.csv of tuning report): give a new "
                         "or empty directory")


def build_parser(prog: str = "python -m tuning.report") -> OneLineParser:
    parser = OneLineParser(prog=prog, description="Write the report of a study.")
    add_storage_arguments(parser, "study name (default mnist)", study_default="mnist")
    parser.add_argument("--out", type=Path, help="output directory (default reports/<study>)")
    parser.add_argument("--artifacts", type=Path,
                        help="artifact directory with checkpoints (default $TUNING_ARTIFACTS, "
                             "else ./artifacts)")
    parser.add_argument("--data-dir", type=Path,
                        help="directory with the study's IDX files (default ./data); only read: "
                             "the report downloads and creates nothing there")
    parser.add_argument("--dataset",
                        help="where the study's image folder or .npz file is now, when not "
                             "where the study recorded it")
    parser.add_argument("--device", default="auto", help="device for the test evaluation")
    parser.add_argument("--no-test", action="store_true",
                        help="skip the held-out test evaluation")
    add_verbosity_arguments(parser)
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m tuning.report") -> int:
    args = build_parser(prog).parse_args(argv)
    configure_logging(args.quiet, args.verbose)
    url = storage_url(args.storage, args.study)
    out = args.out or Path("reports") / args.study
    try:
        resolve_url(url)
        check_data_dir(args.data_dir)
        check_out(out)
        study = load_existing(args.study, url, heartbeat=False)
        if count_finished(study) == 0:
            raise UsageError(f"study {args.study!r} has no finished trials yet")
        artifacts = existing_artifact_store(args.artifacts)
        metrics = build_report(study, out, args.device, artifacts, not args.no_test,
                               data_dir=args.data_dir, dataset=args.dataset)
    except UsageError as exc:
        return fail(exc)
    also = "summary.md, trials.csv" + (f", {METRICS_FILE}" if metrics else "")
    print(f"report written to {out}/index.html (and {also})")
    if metrics:
        print(result_line(metrics))
    return 0


def result_line(metrics: dict) -> str:
    """The held-out test's result in one line, for the terminal."""
    b, t, test = metrics["best"], metrics["tutorial"], metrics["mcnemar"]

    def accuracy(m: dict) -> str:
        low, high = m["accuracy_ci"]
        return f"{m['accuracy']:.4f} (95% CI {low:.4f}-{high:.4f})"

    return (f"test accuracy: trial #{metrics['best_trial']} {accuracy(b)}, tutorial "
            f"{accuracy(t)}; McNemar {p_text(test['p_value'])} "
            f"({'beyond noise' if test['p_value'] < ALPHA else 'not beyond noise'})")

