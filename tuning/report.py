"""`python -m tuning.report --study NAME`: which optimizer, which learning rate, how much
regularization, with the evidence; and the best configuration once on the held-out test set.

Writes `index.html` (self-contained: plotly.js is inlined, nothing is fetched), `summary.md`
with the same tables, `trials.csv`, and `test_metrics.json`.
"""

from __future__ import annotations

import csv
import html
import json
import math
import statistics
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from tuning.cli import OneLineParser, configure_logging, count_finished, fail, study_name
from tuning.data import Arrays, check_data_dir, load_arrays
from tuning.errors import UsageError
from tuning.space import REPEAT, Param, StudySettings, load_study_file
from tuning.storage import (
    artifact_store,
    default_storage,
    resolve_url,
)
from tuning.study import check_data_matches, load_existing, stored_definition

REGULARIZERS = ("weight_decay", "l1", "dropout", "crop_padding", "label_smoothing")
IMPORTANCE_EVALUATOR = ("fANOVA (optuna.importance.FanovaImportanceEvaluator, seed 0); Optuna "
                        "4.x used it by default, 5.x defaults to PED-ANOVA")
SEED_STUDY_FILE = Path(__file__).resolve().parents[1] / "studies" / "seed.toml"
# Range ends nothing can go past: the family's 1-3 conv blocks of 1-3 convs, and zero for a
# regularizer.
HARD_LIMITS = {"blocks": {"lower": 1, "upper": 3}, "convs": {"lower": 1, "upper": 3},
               "dropout": {"lower": 0},
               "label_smoothing": {"lower": 0}, "crop_padding": {"lower": 0},
               "momentum": {"lower": 0}}


# --- numbers --------------------------------------------------------------------------------

def _fmt(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else \
            f"{value:.{digits}f}"
    return str(value)


def spearman(x: list[float], y: list[float]) -> float | None:
    """Rank correlation; None with fewer than 4 points or no spread."""
    if len(x) < 4 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    rx = np.argsort(np.argsort(x)).astype(float)
    ry = np.argsort(np.argsort(y)).astype(float)
    return float(np.corrcoef(rx, ry)[0, 1])


def mean_and_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean, standard deviation and the half-width of the 95% interval of the mean (Student's
    t: with 3 repeats the normal 1.96 would claim an interval half as wide as it is)."""
    from scipy.stats import t as student_t

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0, 0.0
    sd = statistics.stdev(values)
    return mean, sd, float(student_t.ppf(0.975, len(values) - 1)) * sd / math.sqrt(len(values))


@dataclass
class Table:
    """A table rendered both as HTML and as Markdown."""

    columns: list[str]
    rows: list[list] = field(default_factory=list)

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in self.rows]
        return "\n".join(lines)

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row)
                       + "</tr>" for row in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


@dataclass
class Section:
    """One section of the report: prose, tables and figures."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[str, Table]] = field(default_factory=list)
    figures: list = field(default_factory=list)


# --- the analysis ---------------------------------------------------------------------------

@dataclass
class StudyView:
    """A study's trials with everything the sections need."""

    study: optuna.Study
    trials: list[FrozenTrial]
    settings: StudySettings
    space: dict[str, Param]

    @property
    def completed(self) -> list[FrozenTrial]:
        return [t for t in self.trials if t.state == TrialState.COMPLETE]

    def param(self, trial: FrozenTrial, name: str):
        """A trial's value for a parameter, sampled or fixed by the study."""
        if name in trial.params:
            return trial.params[name]
        p = self.space.get(name)
        return p.value if p is not None and p.kind == "fixed" else None

    def final_loss(self, trial: FrozenTrial) -> float | None:
        """Best validation loss seen: the value of a complete trial, the best report of a
        pruned one."""
        if trial.value is not None and trial.state == TrialState.COMPLETE:
            return trial.value
        values = [v for v in trial.intermediate_values.values() if math.isfinite(v)]
        return min(values) if values else None

    def gap(self, trial: FrozenTrial) -> float | None:
        """Generalization gap at the last epoch: validation loss minus training loss."""
        train = trial.user_attrs.get("train_loss")
        if train is None or not trial.intermediate_values:
            return None
        last = trial.intermediate_values[max(trial.intermediate_values)]
        return last - train if math.isfinite(last) else None


def overview(view: StudyView) -> Section:
    s = Section("Overview")
    trials = view.trials
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    epochs_run = sum(t.user_attrs.get("epochs_run", 0) for t in trials)
    seconds = sum(t.user_attrs.get("train_seconds", 0.0) for t in trials)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    saved = sum(view.settings.epochs - t.user_attrs.get("epochs_run", view.settings.epochs)
                for t in pruned)
    data = view.study.user_attrs.get("data", {})
    table = Table(["item", "value"], [
        ["trials", ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "none"],
        ["data", f"{data.get('name')} ({data.get('source')}): {data.get('n_train')} train, "
                 f"{data.get('n_val')} validation, {data.get('n_test')} test"],
        ["epochs per trial (max)", view.settings.epochs],
        ["sampler / pruner", f"{view.settings.sampler} / {view.settings.pruner}"],
        ["compute spent", f"{epochs_run} epochs, {seconds:.1f} s of training"],
        ["compute saved by pruning",
         f"{saved} epochs not run ({saved / max(saved + epochs_run, 1):.0%} of the full "
         "budget)"],
    ])
    s.tables.append(("Study", table))
    if view.completed:
        best = view.study.best_trial
        s.paragraphs.append(
            f"Best trial #{best.number}: validation loss {best.value:.4f}, validation accuracy "
            f"{best.user_attrs.get('val_accuracy', float('nan')):.4f}.")
        params = Table(["parameter", "best value"],
                       [[k, v] for k, v in {**{n: p.value for n, p in view.space.items()
                                                if p.kind == "fixed"},
                                             **best.params}.items()])
        s.tables.append(("Best configuration", params))
    space = Table(["parameter", "search range"], [
        [n, (f"{p.low} .. {p.high}" + (" (log)" if p.log else "")) if p.kind in ("float", "int")
         else (", ".join(map(str, p.choices)) if p.kind == "categorical" else f"fixed {p.value}")]
        for n, p in view.space.items()])
    s.tables.append(("Search space", space))
    return s


def optimizers(view: StudyView) -> Section:
    import plotly.graph_objects as go

    s = Section("Optimizers")
    groups: dict[str, list[FrozenTrial]] = {}
    for t in view.trials:
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            groups.setdefault(str(view.param(t, "optimizer")), []).append(t)
    table = Table(["optimizer", "trials", "pruned", "best val loss", "median val loss",
                   "mean ± 95% CI (complete)", "best val acc", "median val acc", "best lr"])
    fig = go.Figure()
    for name, trials in sorted(groups.items()):
        losses = [view.final_loss(t) for t in trials if view.final_loss(t) is not None]
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        accs = [t.user_attrs.get("val_accuracy") for t in trials
                if t.user_attrs.get("val_accuracy") is not None]
        best = min(trials, key=lambda t: view.final_loss(t) or math.inf)
        ci = "-"
        if len(complete) > 1:
            mean, sd, half = mean_and_ci([t.value for t in complete])
            ci = f"{mean:.4f} ± {half:.4f} (sd {sd:.4f}, n={len(complete)})"
        table.rows.append([name, len(trials), sum(t.state == TrialState.PRUNED for t in trials),
                           min(losses) if losses else None,
                           statistics.median(losses) if losses else None, ci,
                           max(accs) if accs else None,
                           statistics.median(accs) if accs else None,
                           view.param(best, "lr")])
        fig.add_trace(go.Box(y=losses, name=name, boxpoints="all", jitter=0.4))
    fig.update_layout(title="Validation loss by optimizer (complete and pruned trials)",
                      yaxis_title="best validation loss", yaxis_type="log")
    s.tables.append(("Per optimizer", table))
    s.figures.append(fig)
    counts = [len(v) for v in groups.values()]
    if len(counts) > 1 and max(counts) > 1.5 * min(counts):
        s.paragraphs.append(
            "The comparison is unequal: the sampler gave some optimizers more trials than others "
            f"({', '.join(f'{k}: {len(v)}' for k, v in sorted(groups.items()))}). An adaptive "
            "sampler spends its budget where it already found good results, so the favoured "
            "optimizer's best value benefits from more tries. For an equal budget with the same "
            "seeds, run studies/compare-optimizers.toml.")
    elif len(counts) == 1:
        s.paragraphs.append("Only one optimizer was tried.")
    repeats = [t for t in view.completed if REPEAT in t.params]
    if repeats:
        s.tables.append(("Optimizer x learning rate over repeats (same seeds for each)",
                         _repeat_table(view, repeats)))
    return s


def _repeat_table(view: StudyView, trials: list[FrozenTrial]) -> Table:
    cells: dict[tuple, list[FrozenTrial]] = {}
    for t in trials:
        cells.setdefault((view.param(t, "optimizer"), view.param(t, "lr")), []).append(t)
    table = Table(["optimizer", "lr", "repeats", "mean val loss", "sd", "95% CI",
                   "mean val acc"])
    for (opt, lr), group in sorted(cells.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        mean, sd, half = mean_and_ci([t.value for t in group])
        acc = statistics.fmean(t.user_attrs.get("val_accuracy", 0.0) for t in group)
        table.rows.append([opt, lr, len(group), mean, sd,
                           f"{mean - half:.4f} .. {mean + half:.4f}", acc])
    return table


def learning_rate(view: StudyView) -> Section:
    import plotly.graph_objects as go

    s = Section("Learning rate")
    fig = go.Figure()
    table = Table(["optimizer", "trials", "best lr", "good lr range (best quarter)",
                   "best val loss"])
    groups: dict[str, list] = {}
    for t in view.trials:
        loss = view.final_loss(t)
        lr = view.param(t, "lr")
        if loss is not None and lr is not None:
            groups.setdefault(str(view.param(t, "optimizer")), []).append((lr, loss, t))
    for name, points in sorted(groups.items()):
        fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points],
                                 mode="markers", name=name,
                                 text=[f"trial {p[2].number} ({p[2].state.name.lower()})"
                                       for p in points]))
        ranked = sorted(points, key=lambda p: p[1])
        top = ranked[:max(1, len(ranked) // 4)]
        table.rows.append([name, len(points), ranked[0][0],
                           f"{min(p[0] for p in top):.2g} .. {max(p[0] for p in top):.2g}",
                           ranked[0][1]])
    fig.update_layout(title="Validation loss against learning rate", xaxis_type="log",
                      yaxis_type="log", xaxis_title="learning rate",
                      yaxis_title="best validation loss")
    s.figures.append(fig)
    s.tables.append(("Best learning rates per optimizer", table))
    s.paragraphs.append("The good range is the span of learning rates among each optimizer's "
                        "best quarter of trials.")
    return s


def regularization(view: StudyView) -> Section:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    s = Section("Regularization")
    tuned = [n for n in REGULARIZERS if n in view.space and view.space[n].kind != "fixed"]
    table = Table(["regularizer", "trials", "best trial's value",
                   "rank corr. with val loss", "rank corr. with val accuracy",
                   "rank corr. with generalization gap", "reading"])
    if not tuned:
        s.paragraphs.append("No regularization parameter was tuned in this study.")
        return s
    fig = make_subplots(rows=2, cols=len(tuned), subplot_titles=tuned * 2, vertical_spacing=0.15)
    best = view.study.best_trial if view.completed else None
    for col, name in enumerate(tuned, start=1):
        pts = [(view.param(t, name), view.final_loss(t), view.gap(t)) for t in view.trials
               if view.param(t, name) is not None and view.final_loss(t) is not None]
        xs = [float(p[0]) for p in pts]
        corr_loss = spearman(xs, [p[1] for p in pts])
        with_acc = [(float(view.param(t, name)), t.user_attrs["val_accuracy"])
                    for t in view.trials if view.param(t, name) is not None
                    and t.user_attrs.get("val_accuracy") is not None]
        corr_acc = spearman([p[0] for p in with_acc], [p[1] for p in with_acc])
        with_gap = [(float(p[0]), p[2]) for p in pts if p[2] is not None]
        corr_gap = spearman([p[0] for p in with_gap], [p[1] for p in with_gap])
        table.rows.append([name, len(pts), view.param(best, name) if best else None,
                           corr_loss, corr_acc, corr_gap, _reading(corr_loss, corr_gap)])
        fig.add_trace(go.Scatter(x=xs, y=[p[1] for p in pts], mode="markers",
                                 showlegend=False), row=1, col=col)
        fig.add_trace(go.Scatter(x=[p[0] for p in with_gap], y=[p[1] for p in with_gap],
                                 mode="markers", marker_color="indianred", showlegend=False),
                      row=2, col=col)
        if view.space[name].log:
            fig.update_xaxes(type="log", row=1, col=col)
            fig.update_xaxes(type="log", row=2, col=col)
        fig.update_yaxes(type="log", row=1, col=col)
    fig.update_yaxes(title_text="val loss", row=1, col=1)
    fig.update_yaxes(title_text="val − train loss", row=2, col=1)
    fig.update_layout(title="Regularization: validation loss (top) and generalization gap "
                            "(bottom)", height=600)
    s.figures.append(fig)
    s.tables.append(("Effect of each regularizer", table))
    s.paragraphs.append(
        "Rank correlation (Spearman) across trials: negative means more of it went with lower "
        "loss or a smaller gap. The generalization gap is the last epoch's validation loss "
        "minus its training loss; a large gap is how overfitting shows. Label smoothing raises "
        "validation cross-entropy by design (its predictions are less confident), so judge it "
        "by accuracy as well. Correlations across an "
        "adaptive search are evidence, not proof: parameters were not varied one at a time.")
    return s


def _reading(corr_loss: float | None, corr_gap: float | None) -> str:
    if corr_loss is None:
        return "too few trials"
    strength = abs(corr_loss)
    if strength < 0.2:
        effect = "little effect on validation loss"
    else:
        effect = ("more helped" if corr_loss < 0 else "more hurt") + \
            (" (strongly)" if strength >= 0.5 else "")
    if corr_gap is not None and corr_gap <= -0.2:
        effect += "; narrows the gap"
    return effect


def importance(view: StudyView) -> Section:
    s = Section("Importance and history")
    from optuna import visualization as vis

    if len(view.completed) >= 2:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scores = optuna.importance.get_param_importances(
                    view.study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
            s.tables.append(("Hyperparameter importance",
                             Table(["parameter", "importance"], [[k, v] for k, v in
                                                                 scores.items()])))
            s.paragraphs.append(f"Importance evaluator: {IMPORTANCE_EVALUATOR}. Parameters "
                                "sampled only for some trials (momentum, nesterov) are left "
                                "out.")
        except Exception as exc:  # noqa: BLE001 - e.g. no parameter varies
            s.paragraphs.append(f"Importance could not be computed: {exc}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if view.trials:
            s.figures.append(vis.plot_optimization_history(view.study))
        if any(t.intermediate_values for t in view.trials):
            s.figures.append(vis.plot_intermediate_values(view.study))
        if len(view.completed) >= 2 and any(view.space[n].kind != "fixed" for n in view.space):
            s.figures.append(vis.plot_parallel_coordinate(view.study))
    s.paragraphs.append("Learning curves show every trial's validation loss per epoch; the "
                        "pruned ones stop early.")
    s.paragraphs += edge_warnings(view)
    return s


def edge_warnings(view: StudyView) -> list[str]:
    """Google's tuning playbook: a best value on the edge of its range means the range may be
    too narrow."""
    if not view.completed:
        return []
    best = view.study.best_trial
    found = []
    for name, p in view.space.items():
        if p.kind not in ("float", "int") or name not in best.params:
            continue
        value = best.params[name]
        low, high, v = (math.log(p.low), math.log(p.high), math.log(value)) if p.log else \
            (p.low, p.high, value)
        position = (v - low) / (high - low)
        if position <= 0.05 or position >= 0.95:
            edge = "lower" if position <= 0.05 else "upper"
            advice = "widen the range to see whether better values lie beyond it"
            if HARD_LIMITS.get(name, {}).get(edge) == (p.low if edge == "lower" else p.high):
                advice = ("the range cannot be widened there" + (
                    ": going further needs a new architecture" if name in ("blocks", "convs")
                    else ": this says the search preferred (almost) none of it"))
            found.append(f"Warning: the best {name} ({_fmt(value)}) sits at the {edge} edge of "
                         f"its range {p.low} .. {p.high}; {advice}.")
    return found


def study_arrays(study: optuna.Study, settings: StudySettings,
                 data_dir: Path | None) -> Arrays:
    """The study's data, read from `data_dir` (default ./data) and checked to be the study's.

    A report only reads: nothing is downloaded or created, and data not found or not the
    study's are a UsageError (with --no-test as the way round), never a stand-in.
    """
    stored = study.user_attrs.get("data", {})
    try:
        arrays = load_arrays(stored.get("name", settings.dataset), data_dir, settings.seed,
                             download=False)
    except UsageError as exc:
        raise UsageError(f"{exc}; or skip the held-out test with --no-test") from None
    check_data_matches(study, arrays.fingerprint(),
                       remedy="point --data-dir at the data it was run on, or skip the held-out "
                              "test with --no-test")
    return arrays


def held_out_test(view: StudyView, arrays: Arrays | None, device: str, artifacts,
                  seed_file: Path) -> Section:
    """The best configuration, once, on the test set; beside it the tutorial's."""
    from tuning.data import to_device
    from tuning.device import resolve_device
    from tuning.evaluate import held_out_metrics, model_for_trial, retrain

    s = Section("Held-out test")
    if not view.completed or arrays is None:
        s.paragraphs.append("No complete trial: nothing to evaluate.")
        return s
    runtime = resolve_device(device)
    data = to_device(arrays, runtime.device)
    best = view.study.best_trial
    model, how = model_for_trial(best, view.space, data, runtime,
                                 best.user_attrs.get("epochs_run", view.settings.epochs),
                                 artifacts)
    best_metrics = held_out_metrics(model, data, runtime)
    seed_study = load_study_file(seed_file)
    seed_model = retrain({}, seed_study.space, data, runtime, view.settings.seed,
                         view.settings.epochs)
    seed_metrics = held_out_metrics(seed_model, data, runtime)
    s.paragraphs.append(
        f"Best trial #{best.number} ({how}) and the tutorial's configuration "
        f"({seed_file.name}, trained for the study's {view.settings.epochs} epochs with seed "
        f"{view.settings.seed}), each evaluated once on the {len(arrays.test_y)} test images, "
        "which played no part in the search.")
    s.tables.append(("Test metrics", Table(
        ["configuration", "accuracy", "macro precision", "macro recall", "macro F1"],
        [[f"best trial #{best.number}", best_metrics["accuracy"],
          best_metrics["macro_precision"], best_metrics["macro_recall"],
          best_metrics["macro_f1"]],
         ["tutorial (seed.toml)", seed_metrics["accuracy"], seed_metrics["macro_precision"],
          seed_metrics["macro_recall"], seed_metrics["macro_f1"]]])))
    per_class = Table(["class", "precision (best)", "recall (best)", "F1 (best)",
                       "F1 (tutorial)", "support"])
    for ours, theirs in zip(best_metrics["per_class"], seed_metrics["per_class"], strict=True):
        per_class.rows.append([ours["class"], ours["precision"], ours["recall"], ours["f1"],
                               theirs["f1"], ours["support"]])
    s.tables.append(("Per class", per_class))
    for label, metrics in (("best trial", best_metrics), ("tutorial", seed_metrics)):
        cm = metrics["confusion_matrix"]
        s.tables.append((f"Confusion matrix, {label} (rows: true class, columns: predicted)",
                         Table(["true \\ pred", *map(str, range(len(cm)))],
                               [[i, *row] for i, row in enumerate(cm)])))
    s.metrics = {"best_trial": best.number, "best": best_metrics,  # type: ignore[attr-defined]
                 "tutorial": seed_metrics, "best_model_source": how}
    return s


# --- output ---------------------------------------------------------------------------------

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;
padding:.25em .6em;text-align:right}th{background:#f3f3f3}h2{border-bottom:2px solid #ddd;
margin-top:2em}.warn{color:#a40}"""


def render_html(title: str, sections: list[Section]) -> str:
    from plotly.offline import get_plotlyjs

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{CSS}</style><script>{get_plotlyjs()}</script></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        parts.append(f"<h2 id='{section.title.lower().replace(' ', '-')}'>"
                     f"{html.escape(section.title)}</h2>")
        for p in section.paragraphs:
            cls = " class='warn'" if p.startswith("Warning") else ""
            parts.append(f"<p{cls}>{html.escape(p)}</p>")
        for caption, table in section.tables:
            parts.append(f"<h3>{html.escape(caption)}</h3>{table.html()}")
        for fig in section.figures:
            parts.append(fig.to_html(full_html=False, include_plotlyjs=False))
    parts.append("</body></html>")
    return "\n".join(parts)


def render_markdown(title: str, sections: list[Section]) -> str:
    out = [f"# {title}", ""]
    for section in sections:
        out += [f"## {section.title}", ""]
        out += [p + "\n" for p in section.paragraphs]
        for caption, table in section.tables:
            out += [f"### {caption}", "", table.markdown(), ""]
    return "\n".join(out)


def write_csv(view: StudyView, path: Path) -> None:
    names = sorted({n for t in view.trials for n in t.params} | set(view.space))
    attrs = ["val_accuracy", "train_loss", "epochs_run", "train_seconds", "samples_per_second",
             "seed", "worker", "device", "prune_reason", "fail_reason"]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["number", "state", "value", *names, *attrs])
        for t in view.trials:
            writer.writerow([t.number, t.state.name, t.value,
                             *[view.param(t, n) for n in names],
                             *[t.user_attrs.get(a) for a in attrs]])


def build_report(study: optuna.Study, out: Path, device: str = "auto", artifacts=None,
                 with_test: bool = True, seed_file: Path = SEED_STUDY_FILE,
                 data_dir: Path | None = None) -> dict:
    """Write the report files for `study` into `out`; returns the held-out test metrics.

    The test set is read from `data_dir` (default ./data) before anything else, so that data
    not found stop the report before it spends time on the rest.
    """
    settings, space = stored_definition(study)
    view = StudyView(study, study.get_trials(deepcopy=False), settings, space)
    arrays = study_arrays(study, settings, data_dir) if with_test and view.completed else None
    sections = [overview(view), optimizers(view), learning_rate(view), regularization(view),
                importance(view)]
    metrics = {}
    if with_test:
        test = held_out_test(view, arrays, device, artifacts, seed_file)
        sections.append(test)
        metrics = getattr(test, "metrics", {})
    title = f"Study {study.study_name}"
    (out / "index.html").write_text(render_html(title, sections), encoding="utf-8")
    (out / "summary.md").write_text(render_markdown(title, sections), encoding="utf-8")
    write_csv(view, out / "trials.csv")
    (out / "test_metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def build_parser() -> OneLineParser:
    parser = OneLineParser(prog="python -m tuning.report",
                           description="Write the report of a study.")
    parser.add_argument("--study", default="mnist", type=study_name,
                        help="study name (default mnist)")
    parser.add_argument("--storage", help="storage URL (default: sqlite:///studies/<study>.db)")
    parser.add_argument("--out", type=Path, help="output directory (default reports/<study>)")
    parser.add_argument("--artifacts", type=Path,
                        help="artifact directory with checkpoints (default ./artifacts)")
    parser.add_argument("--data-dir", type=Path,
                        help="directory with the study's IDX files (default ./data); only read: "
                             "the report downloads and creates nothing there")
    parser.add_argument("--device", default="auto", help="device for the test evaluation")
    parser.add_argument("--no-test", action="store_true",
                        help="skip the held-out test evaluation")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging()
    url = args.storage or default_storage(args.study)
    out = args.out or Path("reports") / args.study
    try:
        resolve_url(url)
        check_data_dir(args.data_dir)
        study = load_existing(args.study, url, heartbeat=False)
        if count_finished(study) == 0:
            raise UsageError(f"study {args.study!r} has no finished trials yet")
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise UsageError(f"--out {str(out)!r} cannot be written: {exc.strerror}") from None
        artifacts = artifact_store(args.artifacts) if (args.artifacts or Path(
            "artifacts").is_dir()) else None
        metrics = build_report(study, out, args.device, artifacts, not args.no_test,
                               data_dir=args.data_dir)
    except UsageError as exc:
        return fail(str(exc))
    print(f"report written to {out}/index.html (and summary.md, trials.csv)")
    if metrics:
        b, t = metrics["best"], metrics["tutorial"]
        print(f"test accuracy: best trial #{metrics['best_trial']} {b['accuracy']:.4f}, "
              f"tutorial {t['accuracy']:.4f}; macro F1 {b['macro_f1']:.4f} vs "
              f"{t['macro_f1']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
