"""The report's analysis, one section per question: an overview of the study, which optimizer,
which learning rate and how much regularization. What mattered (importance, history, learning
curves) is in tuning.report_history, the held-out test in tuning.report_heldout.

Each function takes a StudyView and returns a Section of prose, tables and plotly figures.
Every table and plot counts the same trials (StudyView.population says which, under each
table): complete trials for losses, pruned ones counted apart, failed ones nowhere.
"""

from __future__ import annotations

import math
import statistics

from optuna.trial import FrozenTrial, TrialState

from tuning import report_figures as figures
from tuning.errors import counted
from tuning.objective import diverged, stopped_by_budget
from tuning.report_answers import (
    RepeatCell,
    best_cells,
    which_lr,
    which_optimizer,
    which_optimizer_at_its_best,
)
from tuning.report_render import Section, Table, fixed, fmt
from tuning.report_stats import (
    DEFAULT_LR,
    DEFAULT_OPTIMIZER,
    MIN_FOR_MEDIAN_INTERVAL,
    StudyView,
    loss_interval,
    mean_and_ci,
    mean_interval,
    median_interval,
    median_text,
    objective_value,
    objective_values,
)
from tuning.space import REPEAT, applies
from tuning.warm_start import WARM_START_ATTR

# A good range drawn from fewer trials than this would be one trial's learning rate.
MIN_TRIALS_FOR_RANGE = 4


def overview(view: StudyView) -> Section:
    s = Section("Overview")
    trials = view.trials
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    # A trial records its epochs and time as it ends: one that failed (its worker killed) or
    # still runs has only the epochs it reported.
    unended = sum(len(t.intermediate_values) for t in trials if "epochs_run" not in t.user_attrs)
    epochs_run = sum(t.user_attrs.get("epochs_run", 0) for t in trials) + unended
    seconds = sum(t.user_attrs.get("train_seconds", 0.0) for t in trials)
    # A trial's full budget: its epochs on each fold (epochs_run counts them all).
    budget = view.settings.epochs * view.settings.cv_folds

    def not_run(trials: list[FrozenTrial]) -> int:
        return sum(budget - t.user_attrs.get("epochs_run", len(t.intermediate_values))
                   for t in trials)

    # Only the pruner's stops are savings of pruning. A trial the run's --budget stopped was
    # cut short, not judged; one whose loss diverged was stopped by the objective, whatever
    # the pruner; one over the study's limits was never trained: its epochs were never part
    # of the budget.
    cut = [t for t in view.pruned if stopped_by_budget(t)]
    blew_up = [t for t in view.pruned if diverged(t)]
    not_judged = {t.number for t in cut + blew_up + view.untrained}
    saved = not_run([t for t in view.pruned if t.number not in not_judged])
    full = saved + not_run(cut) + not_run(blew_up) + epochs_run
    data = view.study.user_attrs.get("data", {})
    # Images that moved since the search (--dataset gives their place now): the recorded
    # place is where they were.
    recorded = view.study.user_attrs.get("settings", {}).get("dataset")
    moved = (f", read from {view.settings.dataset} now"
             if recorded is not None and view.settings.dataset != recorded else "")
    table = Table(["item", "value"], [
        ["trials", ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "none"],
        ["data", f"{data.get('name')} ({data.get('source')}{moved}): {data.get('n_train')} train, "
                 f"{data.get('n_val')} validation"
                 + (" (pooled into the folds below)" if view.settings.cv_folds > 1 else "")
                 + f", {data.get('n_test')} test"],
        *_data_rows(data),
        ["epochs per trial (max)", view.settings.epochs],
        *_cv_rows(view.settings.cv_folds, view.settings.epochs, data),
        ["sampler / pruner", f"{view.settings.sampler} / {view.settings.pruner}"],
        ["model", _model_description(view.settings)],
        *_limit_rows(view),
        ["compute spent", f"{counted(epochs_run, 'epoch')}, {seconds:.1f} s of training"
                          + (f" ({unended} of the epochs by trials that failed or still run, "
                             "whose time is not counted)" if unended else "")],
        ["compute saved by pruning",
         f"{counted(saved, 'epoch')} not run ({saved / max(full, 1):.0%} of the full budget)"],
        *([["stopped by the run's --budget", f"{counted(len(cut), 'trial')}, "
            f"{counted(not_run(cut), 'epoch')} not run (counted as pruned, not as savings)"]]
          if cut else []),
        *([["stopped early for a diverged loss", f"{counted(len(blew_up), 'trial')}, "
            f"{counted(not_run(blew_up), 'epoch')} not run (counted as pruned, not as savings "
            "of the pruner)"]] if blew_up else []),
    ])
    s.tables.append(("Study", table))
    if data.get("leaks"):
        s.paragraphs.append(
            f"Warning: {data['leaks']} of the {data.get('n_test')} test images "
            f"{'is an exact copy' if data['leaks'] == 1 else 'are exact copies'} of training or "
            "validation images, so the held-out accuracy flatters the model on them; remove the "
            "copies from one side to test on unseen images only.")
    coverage = view.grid_coverage()
    if coverage is not None and coverage[0] < coverage[1]:
        done, size = coverage
        s.paragraphs.append(
            f"Warning: the grid ran {done} of its {size} configurations ({done / size:.0%}); "
            "the comparisons below cover only those, so an optimizer or learning rate may be "
            f"missing or have fewer repeats. Run the study to --trials {size} to complete it.")
    if view.fixed_configuration:
        s.paragraphs.append(_repeats_summary(view))
        s.tables.append(("Configuration (every parameter fixed)", Table(
            ["parameter", "value"], [[k, v] for k, v in view.configuration(
                view.trials[0]).items()] if view.trials else [])))
        return s
    best = view.best()
    if best is not None:
        s.paragraphs.append(
            f"Best trial #{best.number}: validation loss {fixed(best.value)}, validation accuracy "
            f"{best.user_attrs.get('val_accuracy', float('nan')):.4f}.")
        if view.has_repeats:
            same = ", the same seeds for each configuration" if _paired(_repeat_cells(view)) \
                else ""
            s.paragraphs.append(
                f"The study varies the seed (`repeat`){same}: one best run is partly luck; the "
                "means over repeats below are the comparison.")
        config = view.configuration(best)
        s.tables.append(("Best configuration", Table(["parameter", "best value"], [
            [k, v if applies(k, config) else f"{v} (not used by {config.get('optimizer')})"]
            for k, v in config.items()])))
        front = _size_front(view)
        if len(front) > 1:
            s.tables.append(("Size against validation loss: the Pareto front (no other complete "
                             "trial is both smaller and better), smallest first", Table(
                ["trial", "parameters", "validation loss", "validation accuracy"],
                [[f"#{t.number}", f"{t.user_attrs['param_count']:,}", fixed(t.value),
                  f"{t.user_attrs.get('val_accuracy', float('nan')):.4f}"] for t in front])))
    s.tables.append(("Search space", Table(["parameter", "search range"], [
        [n, (f"{p.low} .. {p.high}" + (" (log)" if p.log else "")) if p.kind in ("float", "int")
         else (", ".join(map(str, p.choices)) if p.kind == "categorical" else f"fixed {p.value}")]
        for n, p in view.space.items()])))
    return s


def _model_description(settings) -> str:
    """The network the study trains, for the overview."""
    network = settings.network()
    if network.kind == "cnn":
        return "cnn: the built-in family of small CNNs (tuning.model)"
    if network.kind == "builder":
        return f"{network.model}: your builder, with the [space.model] parameters"
    start = f"weights from {network.weights}" if network.weights else "random initial weights"
    return f"{network.model}: torchvision's architecture, adapted to the images; {start}"


def _limit_rows(view: StudyView) -> list[list]:
    """The study's size and speed limits, and how many trials were pruned for them."""
    limits = view.settings.limits()
    if not limits:
        return []
    over = sum(str(t.user_attrs.get("prune_reason", "")).startswith("over the limits")
               for t in view.pruned)
    stated = [f"max_params {limits.max_params:,}" if limits.max_params is not None else "",
              f"max_latency_ms {limits.max_latency_ms:g}" if limits.max_latency_ms is not None
              else ""]
    return [["limits", f"{', '.join(s for s in stated if s)}: {over} trial"
                       f"{'s' if over != 1 else ''} pruned untrained for exceeding them"]]


def _size_front(view: StudyView) -> list:
    """Complete trials on the Pareto front of (parameters, validation loss), smallest first."""
    sized = sorted(((t.user_attrs["param_count"], t.value, t) for t in view.completed
                    if "param_count" in t.user_attrs and t.value is not None),
                   key=lambda entry: entry[:2])
    front, best = [], math.inf
    for _, value, trial in sized:
        if value < best:
            front.append(trial)
            best = value
    return front


def _cv_rows(folds: int, epochs: int, data: dict) -> list[list]:
    """The overview's row on cross-validation, for a study that uses it: what a fold trains
    and validates on (tuning.folds: the pooled images cut into parts within one of each
    other's size)."""
    if folds == 1:
        return []
    pooled = (data.get("n_train") or 0) + (data.get("n_val") or 0)
    sizes = ""
    if pooled:
        small, large = pooled // folds, -(-pooled // folds)
        validates = f"{small:,}" if small == large else f"{small:,} or {large:,}"
        trains = f"{pooled - small:,}" if small == large else \
            f"{pooled - large:,} or {pooled - small:,}"
        sizes = (f" ({pooled:,}): each fold validates on {validates} of them and trains on the "
                 f"other {trains}")
    return [["cross-validation",
             f"{folds} stratified folds of the training and validation images{sizes}, trained "
             f"one after another for up to {epochs} epochs each; a trial's validation loss and "
             "accuracy are the means over its folds of each fold's best epoch, and its learning "
             f"curve runs fold after fold ({folds * epochs} steps)"]]


def _repeats_summary(view: StudyView) -> str:
    """A study of one fixed configuration run with several seeds: its mean and spread."""
    complete = view.completed
    if not complete:
        return "Every parameter is fixed; no repeat has completed yet."
    mean, sd, half = mean_and_ci(objective_values(complete))
    accs = [a for t in complete if (a := t.user_attrs.get("val_accuracy")) is not None]
    text = (f"Every parameter is fixed: the {len(complete)} complete trials are repeats of one "
            f"configuration with different seeds. Validation loss {fixed(mean)}")
    if sd is not None:
        interval = loss_interval(mean, half, len(complete))
        text += f" ± {fixed(sd)} (sd; 95% interval of the mean: {interval})"
    if accs:
        acc_mean = statistics.fmean(accs)
        acc_sd = f" ± {statistics.stdev(accs):.4f} (sd)" if len(accs) > 1 else ""
        text += f", validation accuracy {acc_mean:.4f}{acc_sd}"
    return text + ". No trial is 'best' here: they differ only by seed."


def optimizers(view: StudyView) -> Section:
    s = Section("Optimizers")
    groups = _by_optimizer(view, view.completed)
    pruned = _by_optimizer(view, view.pruned)
    # The median, not the mean: a search's losses are skewed, and a few diverged trials (a loss
    # of 20 beside 0.3) decide a mean and stretch its t interval below 0.
    # Under repeats one trial's best is partly its seed's luck: the lr whose repeats' mean is
    # lowest stands for the optimizer.
    cells = _repeat_cells(view) if view.has_repeats or view.is_grid else []
    best_of = best_cells(cells) if view.has_repeats else {}
    table = Table(["optimizer", "complete trials", "pruned", "best val loss", "median val loss",
                   "median's 95% interval", "highest val acc", "median val acc",
                   "lr of the best mean" if view.has_repeats else "lr of the best"],
                  fixed_columns=("best val loss", "median val loss", "highest val acc",
                                 "median val acc"))
    for name in sorted(groups.keys() | pruned.keys()):
        trials = groups.get(name, [])
        losses = objective_values(trials)
        accs = [acc for t in trials if (acc := t.user_attrs.get("val_accuracy")) is not None]
        best = min(trials, key=objective_value) if trials else None
        table.rows.append([name, len(trials), len(pruned.get(name, [])),
                           min(losses) if losses else None,
                           statistics.median(losses) if losses else None, median_text(losses),
                           max(accs) if accs else None,
                           statistics.median(accs) if accs else None,
                           best_of[name].lr if name in best_of
                           else view.param(best, "lr") if best and not view.has_repeats
                           else None])
    table.note = (f"{view.population()} The median's interval is distribution-free: two of "
                  "the optimizer's own losses, between which its median lies with 95% "
                  "confidence whatever their distribution, given from "
                  f"{MIN_FOR_MEDIAN_INTERVAL} complete trials on. The highest accuracy is "
                  "any of its trials', not always the best (lowest-loss) trial's.")
    s.tables.append(("Per optimizer", table))
    if "optimizer" in view.tuned and len(groups) > 1:
        s.paragraphs.append(
            which_optimizer_at_its_best(cells) if view.has_repeats else
            which_optimizer({name: objective_values(trials) for name, trials in groups.items()},
                            view.is_grid))
    if view.has_repeats or view.is_grid:
        others = [n for n in view.tuned if n not in ("optimizer", "lr")]
        # One line per configuration but lr: a line through cells of different batch sizes
        # (say) would zigzag between them.
        lines: dict[str, list[figures.Cell]] = {}
        for c in cells:
            label = ", ".join([c.optimizer, *(f"{n}={c.others[n]}" for n in others
                                              if n in c.others)])
            # The interval the table gives, or none where it gives none.
            lines.setdefault(label, []).append(
                figures.Cell(c.lr, c.mean, mean_interval(c.mean, c.half, c.n), c.n))
        s.figures.append(figures.optimizer_lr_means(lines))
        caption = "Optimizer x learning rate"
        if view.has_repeats:
            caption += (" over repeats (the same seeds for each)" if _paired(cells) else
                        " over repeats (not the same seeds for each: the means differ by seed "
                        "as well)")
        repeat_table = _repeat_table(cells, others)
        repeat_table.note = view.population()
        short = [c for c in cells if c.pruned]
        if short:
            repeat_table.note += (
                f" {counted(len(short), 'configuration')} lost repeats to pruning (column "
                "'pruned'): their means are over the repeats that completed only.")
        s.tables.append((caption, repeat_table))
    else:
        s.figures.append(figures.optimizer_boxes(
            {name: objective_values(trials) for name, trials in groups.items()},
            {name: interval for name, trials in groups.items()
             if (interval := median_interval(objective_values(trials))) is not None}))
    proposed = _sampler_choices(view)
    counts = list(proposed.values())
    # Unequal only once the sampler had the trials to give each optimizer 2. A grid gives each
    # the same by construction (one not run to its end is flagged in the overview).
    if len(counts) > 1 and sum(counts) >= 2 * len(counts) and \
            max(counts) > 1.5 * min(counts) and not view.is_grid:
        # Why is not known here: random and start-up trials are unequal by chance, an adaptive
        # sampler by design; the effect on the best values is the same.
        s.paragraphs.append(
            "The comparison is unequal: the sampler gave some optimizers more trials than others "
            f"({', '.join(f'{k}: {n}' for k, n in sorted(proposed.items()))}; its complete and "
            "pruned trials, not the configurations queued to run first). Whether by chance or "
            "because an adaptive sampler favoured it, an optimizer with more tries has more "
            "chances at a good best value. For an equal budget with the same "
            "seeds, run the built-in grid: tuning search --study compare-optimizers.")
    if len(groups) == 1 and "optimizer" in view.tuned:
        s.paragraphs.append("Only one optimizer completed a trial.")
    if "optimizer" not in view.tuned:
        chosen = view.space.get("optimizer")
        s.paragraphs.append(f"The optimizer was fixed, not tuned: every trial trained with "
                            f"{chosen.value if chosen else DEFAULT_OPTIMIZER}.")
    return s


def _sampler_choices(view: StudyView) -> dict[str, int]:
    """How many finished (complete or pruned) trials the sampler gave each optimizer of the
    space, none left out. Trials queued to run first (the study file's `enqueue`, a warm
    start) were the user's choice, not the sampler's."""
    space = view.space.get("optimizer")
    counts = {str(name): 0 for name in space.choices} \
        if space is not None and space.kind == "categorical" else {}
    for t in view.completed + view.pruned:
        if WARM_START_ATTR not in t.user_attrs:
            counts[view.optimizer(t)] = counts.get(view.optimizer(t), 0) + 1
    return counts


def _by_optimizer(view: StudyView, trials: list[FrozenTrial]) -> dict[str, list[FrozenTrial]]:
    groups: dict[str, list[FrozenTrial]] = {}
    for t in trials:
        groups.setdefault(view.optimizer(t), []).append(t)
    return groups


def _repeat_cells(view: StudyView) -> list[RepeatCell]:
    """The complete trials grouped by their whole configuration but `repeat`, so that a cell
    pools nothing but seeds; each with its mean loss, spread and accuracy."""
    def key(t: FrozenTrial) -> tuple:
        config = view.configuration(t)
        others = {k: v for k, v in config.items() if k not in ("optimizer", "lr")}
        return view.optimizer(t), view.lr(t), tuple(sorted(others.items()))

    grouped: dict[tuple, list[FrozenTrial]] = {}
    pruned: dict[tuple, int] = {}
    for t in view.completed:
        grouped.setdefault(key(t), []).append(t)
    for t in view.pruned:
        pruned_key = key(t)
        pruned[pruned_key] = pruned.get(pruned_key, 0) + 1
    cells = []
    # Values of one parameter may be of several types (an int and a float choice): ordered by
    # type first, then by value.
    for (opt, lr, others), group in sorted(grouped.items(), key=lambda kv: (
            kv[0][:2], [(k, type(v).__name__, v) for k, v in kv[0][2]])):
        mean, sd, half = mean_and_ci(objective_values(group))
        accs = [a for t in group if (a := t.user_attrs.get("val_accuracy")) is not None]
        cells.append(RepeatCell(opt, lr, dict(others), len(group),
                                frozenset(view.param(t, REPEAT) for t in group), mean, sd,
                                half, statistics.fmean(accs) if accs else None,
                                pruned.get((opt, lr, others), 0)))
    return cells


def _paired(cells: list[RepeatCell]) -> bool:
    """Whether every cell's mean is over the same seeds, so that the cells differ by
    configuration alone. A complete grid over `repeat` pairs them; a random or adaptive
    sampler draws `repeat` per trial, and pruning takes repeats out of some cells."""
    return len({c.repeats for c in cells}) == 1


def _repeat_table(cells: list[RepeatCell], others: list[str]) -> Table:
    """One row per configuration; `others`: the tuned parameters besides optimizer and lr,
    one column each."""
    table = Table(["optimizer", "lr", *others, "repeats", "pruned", "mean val loss", "sd",
                   "95% CI", "mean val acc"],
                  fixed_columns=("mean val loss", "sd", "mean val acc"))
    for c in cells:
        interval = loss_interval(c.mean, c.half, c.n)
        table.rows.append([c.optimizer, c.lr, *[c.others.get(n) for n in others], c.n,
                           c.pruned, c.mean, c.sd, interval, c.accuracy])
    return table


def learning_rate(view: StudyView) -> Section:
    s = Section("Learning rate")
    if "lr" not in view.tuned:
        # Every trial had the same learning rate: a "good range" of it would be that one value,
        # shaded over the whole plot, as if the search had found it.
        chosen = view.space.get("lr")
        s.paragraphs.append(f"The learning rate was fixed, not tuned: every trial trained with "
                            f"lr {fmt(chosen.value if chosen else DEFAULT_LR)}.")
        return s
    # Under repeats the paragraph below answers from the means: the table is of single trials.
    table = Table(["optimizer", "complete trials",
                   "best trial's lr" if view.has_repeats else "best lr", "good lr range",
                   "best val loss"],
                  fixed_columns=("best val loss",))
    groups: dict[str, list[figures.Point]] = {}
    for t in view.completed:
        lr = view.param(t, "lr")
        if lr is not None and t.value is not None:
            groups.setdefault(view.optimizer(t), []).append(
                figures.Point(float(lr), t.value, f"trial {t.number}"))
    pruned = [figures.Point(float(lr), loss, f"trial {t.number} (pruned)") for t in view.pruned
              if (lr := view.param(t, "lr")) is not None
              and (loss := view.final_loss(t)) is not None]
    good: dict[str, tuple[float, float]] = {}
    for name, points in sorted(groups.items()):
        ranked = sorted(points, key=lambda p: p.y)
        span = "-"
        if len(ranked) >= MIN_TRIALS_FOR_RANGE:
            top = ranked[:max(2, math.ceil(len(ranked) / 4))]
            good[name] = (min(p.x for p in top), max(p.x for p in top))
            span = f"{_span(*good[name])} (best {len(top)} of {len(ranked)})"
        table.rows.append([name, len(points), ranked[0].x, span, ranked[0].y])
    s.figures.append(figures.lr_scatter(groups, pruned, good))
    table.note = (f"{view.population()} The good range is the span of learning rates among "
                  "each optimizer's best quarter of complete trials, but at least its best 2 "
                  "(each row says how many; shaded in the plot), given from "
                  f"{MIN_TRIALS_FOR_RANGE} trials on.")
    s.tables.append(("Best learning rates per optimizer", table))
    if view.has_repeats:
        # One paragraph per optimizer: four in one block do not read.
        s.paragraphs += ["Which learning rate, from the means over repeats (one trial's best "
                         "is partly its seed's luck):", *which_lr(_repeat_cells(view))]
    return s


def _span(low: float, high: float) -> str:
    """'0.001 .. 0.003': two significant digits, more where two ends that differ would read
    the same (0.00101 .. 0.00104)."""
    for digits in range(2, 17):
        shown = f"{low:.{digits}g}", f"{high:.{digits}g}"
        if low == high or shown[0] != shown[1]:
            break
    return " .. ".join(shown)


def _data_rows(data: dict) -> list[list]:
    """What a study records of its images beyond their counts (studies before images of any
    shape record none of it)."""
    rows: list[list] = []
    if "input_shape" in data:
        channels, height, width = data["input_shape"]
        rows.append(["images", f"{height}x{width}, {'colour' if channels == 3 else 'grayscale'}"
                               f", normalized with mean {_per_channel(data['mean'])} and std "
                               f"{_per_channel(data['std'])} of the training split"])
    if "class_names" in data:
        names = data["class_names"]
        shown = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12
                                          else "")
        rows.append(["classes", f"{len(names)}: {shown}"])
    if "leaks" in data:
        rows.append(["test images also in training or validation", data["leaks"]])
    return rows


def _per_channel(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)
