"""Tier 1: objective and pruning semantics through ask/tell, on a few hundred real digits."""

from __future__ import annotations

import ast
import math
import re

import optuna
import pytest
import torch
from helpers import small_space
from optuna.trial import TrialState

from tuning.device import resolve_device
from tuning.errors import UsageError
from tuning.objective import Objective
from tuning.strategy import PRUNERS, SAMPLERS, make_pruner, make_sampler
from tuning.study_file import StudySettings, parse_study
from tuning.train import LR_SCHEDULES, OPTIMIZERS, TrainConfig, make_optimizer, make_scheduler

SMALL_SPACE = small_space()


def make_objective(data, space=SMALL_SPACE, epochs=3) -> Objective:
    return Objective(data=data, runtime=resolve_device("cpu"), space=space, epochs=epochs,
                     seed=0)


def test_objective_returns_best_validation_loss_and_records_attributes(tiny_data):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    value = make_objective(tiny_data)(trial)
    study.tell(trial, value)
    frozen = study.trials[0]
    assert frozen.state == TrialState.COMPLETE
    assert value == pytest.approx(min(frozen.intermediate_values.values()))
    assert sorted(frozen.intermediate_values) == [1, 2, 3]  # reported every epoch
    attrs = frozen.user_attrs
    assert attrs["epochs_run"] == 3 and attrs["device"] == "cpu" and ":" in attrs["worker"]
    assert 0.0 <= attrs["val_accuracy"] <= 1.0 and math.isfinite(attrs["train_eval_loss"])
    assert len(attrs["train_eval_losses"]) == len(attrs["train_objectives"]) == 3
    # Each epoch's accuracy and when it was known, in order; the best epoch's is val_accuracy.
    assert len(attrs["val_accuracies"]) == 3
    assert pytest.approx(attrs["val_accuracy"], abs=1e-6) in attrs["val_accuracies"]
    assert 0 < attrs["epoch_ends"][0] < attrs["epoch_ends"][1] < attrs["epoch_ends"][2]
    assert attrs["train_seconds"] > 0 and attrs["samples_per_second"] > 0
    assert attrs["seed"] == 0


def test_same_trial_number_and_params_give_the_same_result(tiny_data):
    values = []
    for _ in range(2):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=5))
        trial = study.ask()
        values.append(make_objective(tiny_data, epochs=1)(trial))
    assert values[0] == values[1]


def test_pruned_trial_stops_early_and_says_why(tiny_data):
    # A threshold no loss can meet: the pruner stops every trial after its first report.
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=1e-9))
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned):
        make_objective(tiny_data)(trial)
    study.tell(trial, state=TrialState.PRUNED)
    frozen = study.trials[0]
    assert frozen.state == TrialState.PRUNED
    assert frozen.user_attrs["epochs_run"] == 1
    assert "pruner" in frozen.user_attrs["prune_reason"]


def test_median_pruner_prunes_a_trial_worse_than_the_median(tiny_data):
    study = optuna.create_study(pruner=make_pruner("median", epochs=3))
    for value in [0.5, 0.4, 0.45, 0.5, 0.42]:  # five finished trials, a loss per epoch
        study.add_trial(optuna.create_trial(
            value=value, intermediate_values={1: value + 0.2, 2: value + 0.1, 3: value}))
    trial = study.ask()
    trial.report(5.0, 1)  # warm-up: the first epoch is never judged
    assert not trial.should_prune()
    trial.report(5.0, 2)
    assert trial.should_prune()


def test_diverging_trial_is_pruned_with_its_reason(tiny_data):
    space = parse_study({"space": {"optimizer": "sgd", "lr": 1e12, "momentum": 0.9,
                                   "batch_size": 128}}).space
    study = optuna.create_study()
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned):
        make_objective(tiny_data, space=space)(trial)
    study.tell(trial, state=TrialState.PRUNED)
    assert "not finite" in study.trials[0].user_attrs["prune_reason"]


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_drives_the_space(name):
    sampler = make_sampler(name, seed=0, space=SMALL_SPACE)
    study = optuna.create_study(sampler=sampler)
    from tuning.space import sample
    for i in range(4):
        trial = study.ask()
        params = sample(trial, SMALL_SPACE)
        assert params["optimizer"] in {"adam", "sgd"} and 1e-3 <= params["lr"] <= 1e-1
        study.tell(trial, float(i))


@pytest.mark.parametrize("name", PRUNERS)
def test_every_pruner_can_be_built_and_consulted(name):
    study = optuna.create_study(pruner=make_pruner(name, epochs=4))
    trial = study.ask()
    trial.report(1.0, 1)
    assert trial.should_prune() in (True, False)


def _listed(message: str) -> list[str]:
    """The names a message offers after 'choose one of'."""
    return message.split("choose one of ", 1)[1].split(", ")


@pytest.mark.parametrize(
    ("kind", "registry", "make"),
    [("sampler", SAMPLERS, lambda name: make_sampler(name, seed=0, space=SMALL_SPACE)),
     ("pruner", PRUNERS, lambda name: make_pruner(name, epochs=4))],
)
def test_an_unknown_sampler_or_pruner_is_refused_listing_exactly_the_registered_names(
        kind, registry, make):
    with pytest.raises(ValueError, match=f"unknown {kind} 'bayes'") as err:
        make("bayes")
    assert _listed(str(err.value)) == list(registry)
    # A study file says the same.
    [problem] = StudySettings(**{kind: "bayes"}).problems()
    assert problem.startswith(f"unknown {kind} 'bayes'")
    assert _listed(problem) == list(registry)


def test_a_sampler_or_pruner_registered_in_one_place_is_accepted_everywhere(monkeypatch):
    monkeypatch.setitem(SAMPLERS, "sobol", SAMPLERS["qmc"])
    monkeypatch.setitem(PRUNERS, "patient",
                        lambda epochs: optuna.pruners.PatientPruner(None, patience=1))
    settings = parse_study({"study": {"sampler": "sobol", "pruner": "patient"}}).settings
    assert isinstance(make_sampler(settings.sampler, 0, SMALL_SPACE), optuna.samplers.BaseSampler)
    assert isinstance(make_pruner(settings.pruner, 4), optuna.pruners.PatientPruner)
    with pytest.raises(ValueError) as err:
        make_sampler("bayes", 0, SMALL_SPACE)
    assert "sobol" in _listed(str(err.value))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_builds_and_steps(name):
    model = torch.nn.Linear(3, 2)
    optimizer = make_optimizer(model, TrainConfig(optimizer=name, lr=0.1))
    assert optimizer.param_groups[0]["lr"] == 0.1
    before = model.weight.detach().clone()
    model(torch.ones(4, 3)).square().sum().backward()
    optimizer.step()
    assert not torch.equal(model.weight, before)


@pytest.mark.parametrize("name", LR_SCHEDULES)
def test_every_lr_schedule_builds_and_runs_over_the_planned_steps(name):
    model = torch.nn.Linear(3, 2)
    cfg = TrainConfig(lr_schedule=name, lr=0.1)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, epochs=2, steps_per_epoch=5)
    rates = []
    for _ in range(10):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
    # "none" keeps the rate constant; every schedule changes it.
    assert (scheduler is None) == (name == "none") == (len(set(rates)) == 1)


@pytest.mark.parametrize(("field", "registry"),
                         [("optimizer", OPTIMIZERS), ("lr_schedule", LR_SCHEDULES)])
def test_an_unknown_optimizer_or_schedule_is_refused_listing_exactly_the_registered_names(
        field, registry):
    with pytest.raises(ValueError) as err:
        TrainConfig(**{field: "lion"})
    listed = re.search(rf"{field} must be one of (\[.*?\]), got", str(err.value))
    assert listed and ast.literal_eval(listed.group(1)) == list(registry)
    with pytest.raises(UsageError) as err:  # a study file names them too, in its own words
        parse_study({"space": {field: {"choices": ["lion"]}}})
    assert str(err.value).endswith("choose from " + ", ".join(repr(name) for name in registry))


def test_an_optimizer_registered_in_one_place_is_accepted_everywhere(monkeypatch):
    monkeypatch.setitem(OPTIMIZERS, "adagrad",
                        lambda params, cfg: torch.optim.Adagrad(params, lr=cfg.lr))
    space = parse_study({"space": {"optimizer": {"choices": ["adam", "adagrad"]}}}).space
    assert space["optimizer"].choices == ("adam", "adagrad")
    optimizer = make_optimizer(torch.nn.Linear(3, 2), TrainConfig(optimizer="adagrad"))
    assert isinstance(optimizer, torch.optim.Adagrad)


def test_out_of_memory_is_a_recorded_failure(tiny_data, monkeypatch):
    import tuning.objective as objective_module
    from tuning.objective import TrialFailed

    def boom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    monkeypatch.setattr(objective_module, "fit", boom)
    study = optuna.create_study()
    trial = study.ask()
    with pytest.raises(TrialFailed):
        make_objective(tiny_data)(trial)
    assert "out of memory" in study.trials[0].user_attrs["fail_reason"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_same_objective_trains_on_cuda_with_bf16_and_channels_last(tiny_arrays):
    from tuning.data import to_device

    runtime = resolve_device("cuda")
    assert runtime.autocast_dtype == torch.bfloat16 and runtime.channels_last
    data = to_device(tiny_arrays, runtime.device)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    objective = Objective(data=data, runtime=runtime, space=SMALL_SPACE, epochs=2, seed=0)
    value = objective(trial)
    study.tell(trial, value)
    assert math.isfinite(value) and study.trials[0].user_attrs["device"].startswith("cuda:0")


def test_repeat_parameter_pairs_seeds_across_configurations(tiny_data):
    """compare-optimizers.toml relies on this: repeat r trains with seed + r whatever else the
    trial's configuration is, so each optimizer sees the same seeds."""
    space = parse_study({"space": {"optimizer": {"choices": ["adam", "sgd"]},
                                   "repeat": {"choices": [0, 1]}, "batch_size": 256,
                                   "channels": 8}}).space
    study = optuna.create_study(sampler=make_sampler("grid", seed=0, space=space))
    objective = Objective(data=tiny_data, runtime=resolve_device("cpu"), space=space, epochs=1,
                          seed=10)
    for _ in range(4):
        trial = study.ask()
        study.tell(trial, objective(trial))
    seeds = {(t.params["optimizer"], t.params["repeat"]): t.user_attrs["seed"]
             for t in study.trials}
    assert seeds == {("adam", 0): 10, ("sgd", 0): 10, ("adam", 1): 11, ("sgd", 1): 11}


def test_cpu_evaluates_in_cache_sized_batches_and_cuda_in_large_ones():
    # Measured (docs/benchmarks.md): on the CPU, batches of 2,048 evaluated 2-4x slower than 128.
    assert resolve_device("cpu").eval_batch_size == 128
    if torch.cuda.is_available():
        assert resolve_device("cuda").eval_batch_size == 2048


def test_compiled_trials_match_eager_and_reuse_compiled_code_per_architecture(tiny_data):
    """--compile: the same losses as eager (same seed, same batches), a checkpointable plain
    model, and the second trial of an architecture compiles nothing new."""
    from torch._dynamo.utils import counters

    from tuning.model import ArchConfig, build_model
    from tuning.train import TrainConfig, fit, seed_everything

    arch = ArchConfig(blocks=1, channels=4, activation="relu")
    cfg = TrainConfig(batch_size=256)

    def train(compile_mode: str, seed: int) -> tuple[list[float], torch.nn.Module]:
        runtime = resolve_device("cpu", compile_mode)
        generator = seed_everything(seed, runtime.device)
        model = runtime.place(build_model(arch, tiny_data.input_shape, tiny_data.num_classes))
        losses = [r.val["loss"] for r in fit(model, tiny_data, cfg, runtime, generator, 2)]
        return losses, model

    eager, _ = train("off", 0)
    compiled, model = train("default", 0)
    assert compiled == pytest.approx(eager, rel=1e-3)
    assert not any(key.startswith("_orig_mod") for key in model.state_dict())
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > 0  # it did compile
    train("default", 1)  # another trial, same architecture
    assert counters["stats"]["unique_graphs"] == graphs


def test_the_cuda_settings_train_correctly_when_run_on_the_cpu(tiny_data):
    """The CUDA runtime differs from the CPU one only in settings (bf16 autocast, eval batch
    2048): with the device as a parameter, the same code path runs here."""
    from dataclasses import replace

    cpu = resolve_device("cpu")
    cuda_like = replace(cpu, autocast_dtype=torch.bfloat16, eval_batch_size=2048)
    values = {}
    for name, runtime in (("fp32", cpu), ("bf16", cuda_like)):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        trial = study.ask()
        objective = Objective(data=tiny_data, runtime=runtime, space=SMALL_SPACE, epochs=2,
                              seed=0)
        values[name] = objective(trial)
    assert math.isfinite(values["bf16"])
    # bf16 rounds activations, so not equal; but the same training, so close.
    assert values["bf16"] == pytest.approx(values["fp32"], rel=0.02)


def test_a_last_batch_of_one_image_is_left_out_so_batch_norm_trains(tiny_data):
    """Batch norm cannot train on one value per channel: a network whose last block ends in a
    1 x 1 map, or a vector, raised on a last batch of one image (training set size % batch
    size == 1). That batch is left out; every other batch, however small, is kept."""
    from tuning.model import ArchConfig, build_model
    from tuning.train import TrainConfig, fit, seed_everything, steps_per_epoch

    assert [steps_per_epoch(n, 5) for n in (1, 5, 6, 7, 11)] == [1, 1, 1, 2, 2]
    batch = len(tiny_data.train) - 1
    assert len(tiny_data.train) % batch == 1
    runtime = resolve_device("cpu")
    arch = ArchConfig(blocks=5, channels=4, activation="relu", batch_norm=True, hidden=8)
    model = build_model(arch, tiny_data.input_shape, tiny_data.num_classes)
    generator = seed_everything(0, runtime.device)
    results = list(fit(model, tiny_data, TrainConfig(batch_size=batch), runtime, generator, 2))
    assert len(results) == 2 and all(math.isfinite(r.val["loss"]) for r in results)


def test_a_gpu_that_is_not_there_is_named_in_words(monkeypatch):
    """Asked before torch's own error, a paragraph about drivers; the same words for the
    search's --device and an export's load_model."""
    from tuning.device import missing_gpu
    from tuning.exported import ExportError, _device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert missing_gpu(torch.device("cpu")) is None
    assert missing_gpu(torch.device("cuda")) == "no CUDA device is available here"
    with pytest.raises(UsageError, match="^--device 'cuda:1': no CUDA device is available here$"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert missing_gpu(torch.device("cuda:1")) is None
    with pytest.raises(UsageError,
                       match=r"^--device 'cuda:2': only 2 GPUs here \(cuda:0..cuda:1\)$"):
        resolve_device("cuda:2")
    with pytest.raises(ExportError, match=r"^device 'cuda:5': only 2 GPUs here"):
        _device("cuda:5")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert missing_gpu(torch.device("cuda:1")) == "only 1 GPU here (cuda:0)"
