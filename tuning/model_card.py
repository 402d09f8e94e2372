"""README.md of an export, its model card: what the model is, what it was trained on, how good
it is on the held-out test set, where its weights came from, and how to load and reproduce it.

Made from config.json (tuning.export.build_config, with the portable programs' outcome under
`files`) and the export's directory alone, so that the card says nothing the config does not.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from tuning.errors import counted, one_line
from tuning.exported import CONFIG_FILE, WEIGHTS_FILE
from tuning.portable import PROGRAM_DESCRIPTIONS, PROGRAM_FILES
from tuning.reproduce import REPRODUCE_FILE

CARD_FILE = "README.md"


def _shown(value: object) -> str:
    """A parameter's value in the card's table: a float to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _source(name: str, resolved: dict) -> str:
    """Where a value of the configuration came from, for the card's `from` column."""
    if name in resolved["searched"]:
        return "searched"
    return "fixed by the study" if name in resolved["fixed"] else "default"


def _settings_table(title: str, values: dict, resolved: dict) -> list[str]:
    """One table of the configuration: setting, value, where the value came from, and for one
    that had no effect (momentum with adam), why."""
    rows = []
    for name, value in values.items():
        source = _source(name, resolved)
        why = resolved.get("no_effect", {}).get(name)
        rows.append(f"| {name} | {_shown(value)} | {source}"
                    + (f" (no effect: {why})" if why else "") + " |")
    return [f"{title}:", "", "| setting | value | from |", "| --- | --- | --- |", *rows, ""]


def _configuration(config: dict) -> list[str]:
    """The card's Configuration section: everything the network was trained with."""
    spec = config["model"]
    network = (f"Network `{spec['model']}`"
               + (f", fine-tuned from `{spec['weights']}`" if spec.get("weights") else ""))
    resolved = config.get("configuration")
    if resolved is None:  # an export written before config.json had `configuration`
        return [f"{network}; the trial's parameters, the study's fixed ones included:", "",
                "| parameter | value |", "| --- | --- |",
                *(f"| {name} | {_shown(value)} |"
                  for name, value in sorted(config["params"].items())), ""]
    lines = [f"{network}. The full configuration it was trained with: each value chosen by the "
             "search (searched), set by the study (fixed by the study), or left at tuning's "
             f"default; for up to {counted(config['settings']['epochs'], 'epoch')} (the "
             "study's epochs per trial).", "",
             *_settings_table("Training", resolved["training"], resolved)]
    if resolved["network"]:
        title = ("Architecture" if spec["model"] == "cnn"
                 else f"The builder's parameters (given to `{spec['model']}` without `model.`)")
        lines += _settings_table(title, resolved["network"], resolved)
    else:
        lines += [f"The architecture is `{spec['model']}` as torchvision defines it, its "
                  "input and output fitted to the data.", ""]
    if resolved["other"]:
        lines += _settings_table("Other parameters of the trial", resolved["other"], resolved)
    return lines


def model_card(config: dict, out: Path) -> str:
    """README.md of an export: what it is, what it was trained on, how good it is on the
    held-out test set, where its weights came from, and how to load and reproduce it."""
    data, test, weights, files = (config["data"], config["test"], config["weights"],
                                  config["files"])
    c, h, w = config["input_shape"]
    names = config["class_names"]
    # A class's name may hold a line break (a folder's name): the card's line must stay one.
    shown_names = ", ".join(one_line(name) for name in names[:20]) + (
        f", ... ({len(names)} in all)" if len(names) > 20 else "")
    norm = config["normalization"]
    spec = config["model"]
    low, high = test["accuracy_ci"]
    how = weights["how"]
    lines = [
        f"# Study {config['study']}, trial #{config['trial']}", "",
        f"An image classifier exported by `tuning export` from trial #{config['trial']} of "
        f"study `{config['study']}` (validation loss {config['trial_val_loss']:.6f}).", "",
        *_cut_short(config),
        "## Data", "",
        f"- data set: `{data['name']}` ({data['source']}), fingerprint sha256 "
        f"`{str(data['sha256'])[:16]}`",
        f"- images: {c} x {h} x {w} ({'grayscale' if c == 1 else 'colour'}), "
        f"{len(names)} classes: {shown_names}",
        f"- training / validation / test images: {data['n_train']:,} / {data['n_val']:,} / "
        f"{data['n_test']:,}",
        f"- normalization, part of the model (give it images scaled to [0, 1]): mean "
        f"{norm['mean']}, std {norm['std']}", "",
        "## Configuration", "",
        *_configuration(config),
        "## Held-out test", "",
        f"Accuracy **{test['accuracy']:.4f}** (95% Wilson interval {low:.4f} - {high:.4f}) on "
        f"the {test['n']:,} test images, loss {test['loss']:.4f}, macro F1 "
        f"{test['macro_f1']:.4f}, evaluated once on {test['evaluated_on']}. The test images "
        "played no part in the search, the choice of this trial or the training of these "
        "weights.", "",
        "## How the weights were obtained", "",
        f"{how[0].upper()}{how[1:]}.", "",
    ]
    if weights["source"] == "refit":
        lines += ["With no image left to validate on, nothing selected these weights: the test "
                  "accuracy above is this refit network's, not the trial's.", ""]
    lines += ["## Files", "",
              f"- `{WEIGHTS_FILE}`: the network's state dict "
              "(`torch.load(..., weights_only=True)`)",
              f"- `{CONFIG_FILE}`: what rebuilds it, and the numbers on this card",
              *(f"- `{name}`: "
                + (PROGRAM_DESCRIPTIONS[name] if files[name] == "written" else files[name])
                for name in PROGRAM_FILES),
              *([f"- `{REPRODUCE_FILE}`: a study file that trains this trial again from "
                 "scratch (Reproduce, below)"] if config.get("reproduce") else []),
              f"- `{CARD_FILE}`: this card", "",
              "## Load it", "",
              "With tuning installed (the network rebuilt from `config.json`, its weights from "
              "`weights.pt`)"
              + (f", and the builder's module `{spec['model'].partition(':')[0]}` importable"
                 if ":" in spec["model"] else "") + ":", "",
              "```python", "import tuning",
              f"model = tuning.load_model({str(out)!r})  # eval mode, on the CPU",
              "model.predict(['image.png'])  # [(class name, probability)]",
              f"logits = model(images)  # float images in [0, 1], (N, {c}, {h}, {w})", "```", ""]
    if "written" in (files["model.pt2"], files["model.torchscript.pt"]):
        lines += ["With torch alone, no tuning needed (the normalization is inside; any batch "
                  "size; float32 images in [0, 1], (N, "f"{c}, {h}, {w}))"
                  + (", and Pillow and NumPy to read an image file" if c in (1, 3) else "")
                  + ":", "", "```python",
                  "import torch"]
        torchscript = f"model = torch.jit.load({str(out / 'model.torchscript.pt')!r})"
        if files["model.pt2"] == "written":
            lines.append(f"model = torch.export.load({str(out / 'model.pt2')!r}).module()")
            if files["model.torchscript.pt"] == "written":
                lines.append(f"# or, TorchScript (deprecated in torch): {torchscript}")
        else:
            lines.append(f"{torchscript}  # TorchScript: deprecated in torch")
        lines += [*_image_recipe(c, h, w), "logits = model(images)", "```", ""]
        if c in (1, 3):
            lines += [f"The image is read as `tuning predict` reads it: converted to "
                      f"{'grayscale' if c == 1 else 'RGB'}, and where its size is not "
                      f"{w} x {h}, its shorter side scaled to fit (bilinear) and the centre "
                      "cropped. (`tuning predict` also scales 16-bit images to 8 bits, where "
                      "`convert` clips them, and puts transparent pixels on black.)", ""]
    fallback = (" Where the network cannot be rebuilt here with `weights.pt` (the builder's "
                "module not importable, or changed; the weights missing or damaged), it "
                "classifies with `model.pt2` instead." if files["model.pt2"] == "written"
                else "")
    lines += [f"From the command line: `tuning predict --model {shlex.quote(str(out))} "
              f"image.png`.{fallback}", "",
              *_reproduce(config, out),
              "Versions: " + ", ".join(f"{k} {v}" for k, v in config["versions"].items()) + "."]
    return "\n".join(lines) + "\n"


def _cut_short(config: dict) -> list[str]:
    """The card's warning about a trial the run's --budget stopped before its last epoch."""
    cut = config.get("cut_by_budget")
    if not cut:
        return []
    return [f"The run's --budget stopped this trial after {cut['epochs_run']} of its "
            f"{counted(cut['epochs'], 'epoch')}: it is exported as trained that far, not as "
            "the search would have trained it.", ""]


def _image_recipe(c: int, h: int, w: int) -> list[str]:
    """Code that turns an image file into `images` without tuning (Pillow and NumPy), as
    `tuning predict` does (tuning.exported.ExportedModel.pixels); none for images of other
    than 1 or 3 channels, which predict does not read from files either."""
    mode = {1: "L", 3: "RGB"}.get(c)
    if mode is None:
        return []
    return ["", "import numpy as np", "from PIL import Image, ImageOps", "",
            f"image = Image.open('image.png').convert({mode!r})",
            f"image = ImageOps.fit(image, ({w}, {h}), Image.Resampling.BILINEAR)",
            "pixels = np.asarray(image, dtype=np.float32) / 255",
            f"images = torch.from_numpy(pixels).reshape(1, {h}, {w}, {c}).permute(0, 3, 1, 2)"]


def _reproduce(config: dict, out: Path) -> list[str]:
    """The card's Reproduce section: train the configuration again, or export it again."""
    again = [f"Export this trial again (into `{out}`):", "", "```", config["command"], "```",
             ""]
    reproduce = config.get("reproduce")
    if reproduce is None:  # an export from before reproduce.toml
        return ["## Reproduce", "", *again]
    threads = reproduce["cpu_threads"]
    where = (f"on {threads} CPU thread{'s' if threads != 1 else ''}, as this one did"
             if threads else f"on the same kind of device ({reproduce['device']})")
    cut = config.get("cut_by_budget")
    if not reproduce["same_seed"]:
        same = ("The trial's seed is beyond what a study file can give (repeat <= 10,000): "
                "the new trial trains with another seed, so its results differ a little.")
    elif cut:
        same = (f"The new trial trains all {cut['epochs']} epochs, where the run's --budget "
                f"stopped this one after {cut['epochs_run']}: with the same versions (below), "
                f"its first {cut['epochs_run']} are this trial's when it trains {where}.")
    else:
        same = (f"With the same versions (below), the new trial's validation loss is this "
                f"one's, {config['trial_val_loss']:.6f}, when it trains {where}.")
    return ["## Reproduce", "",
            f"Train this configuration again from scratch: `{reproduce['file']}` is a study "
            "file that fixes every parameter to this trial's, with its data split, epochs and "
            "seed. These commands make a new study of it, train its one trial and export it:",
            "", "```", *reproduce["commands"], "```", "", same, "", *again]
