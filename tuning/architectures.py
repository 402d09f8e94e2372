"""torchvision's classification networks by name, randomly initialized and fitted to the data.

`build_torchvision("resnet18", (1, 28, 28), 10)` is torchvision's resnet18 (never downloaded
weights) whose first conv takes the data's channels and whose classifier has the data's classes.
Networks built for 224x224 ImageNet images shrink the image 4x in their stem (a stride-2 conv,
then a stride-2 max-pool); on a 28x28 image that leaves 7x7 before the first block. For images
under SMALL_IMAGE pixels the stem keeps the full resolution instead, as the CIFAR ResNets do (He
et al., arXiv:1512.03385, section 4.2): the first conv gets stride 1 (a 7x7 one becomes 3x3), and
a max-pool before the second conv is dropped.

The adaptation is generic (the first Conv2d, and MaxPool2d before the second, in module order),
not a table per family. Checked on 1x28x28 and 3x32x32 with the smallest network of each
family (the tests run resnet18, mobilenet_v3_small, efficientnet_b0, alexnet and vit_b_16):
resnet, resnext, wide_resnet, mobilenet_v2/v3, efficientnet, efficientnet_v2, densenet,
googlenet, shufflenet_v2, squeezenet, mnasnet, regnet, alexnet, vgg (its first max-pool goes too,
which is what lets vgg run on 28x28), convnext and swin (their 4x4 stride-4 patch conv becomes
stride 1: a 32x32 image gives 29x29 patches), inception_v3 (its stem pools after the third conv,
so only the stride changes; it still needs larger images). vit and maxvit fix their image size
when built (224) and fail `check_runs` on other sizes.

`load_weights` starts a network from a local state dict for fine-tuning, allowing the layers the
adaptation replaced to differ from the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from tuning.errors import UsageError, shorten

TORCHVISION_ARCHITECTURES: tuple[str, ...] = tuple(
    sorted(torchvision.models.list_models(module=torchvision.models)))
"""torchvision's classification networks (not its detection, segmentation or video ones)."""

SMALL_IMAGE = 64
"""Images smaller than this on either side keep their full resolution through the stem."""

# googlenet and inception_v3 return (logits, aux1, aux2) in training mode unless aux_logits is
# off, and warn that their default initialization will change unless it is asked for.
_EXTRA_ARGUMENTS: dict[str, dict[str, bool]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}

# How many names an error message lists before "...".
_LISTED = 3


def is_torchvision_architecture(name: str) -> bool:
    return name in TORCHVISION_ARCHITECTURES


def build_torchvision(name: str, input_shape: tuple[int, int, int],
                      num_classes: int) -> nn.Module:
    """torchvision's network `name`, randomly initialized, for images of `input_shape` (C, H, W)
    and `num_classes` classes (see the module's docstring for how the stem is adapted)."""
    if not is_torchvision_architecture(name):
        raise UsageError(
            f"unknown architecture {shorten(name)!r}; choose cnn, a torchvision classification "
            "model (resnet18, mobilenet_v3_small, efficientnet_b0, ...) or "
            'model = "package.module:function"')
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes,
                                         **_EXTRA_ARGUMENTS.get(name, {}))
    in_channels, height, width = input_shape
    _adapt_stem(model, in_channels, small=min(height, width) < SMALL_IMAGE)
    return model


def _adapt_stem(model: nn.Module, in_channels: int, small: bool) -> None:
    """Give the first conv `in_channels`; on `small` images make it stride 1 (7x7 becomes 3x3)
    and drop the max-pools registered before the second conv (the stem's)."""
    convs = [(name, module) for name, module in model.named_modules()
             if isinstance(module, nn.Conv2d)]
    first_name, first = convs[0]
    if small and len(convs) > 1:
        second_name = convs[1][0]
        for name, module in list(model.named_modules()):  # list: the loop replaces modules
            if name == second_name:
                break
            if isinstance(module, nn.MaxPool2d):
                _replace(model, name, nn.Identity())
    if not small and first.in_channels == in_channels:
        return  # The family's own stem, with its own initialization.
    settings: dict[str, Any] = {
        "kernel_size": first.kernel_size, "stride": first.stride, "padding": first.padding,
        "dilation": first.dilation, "groups": first.groups, "bias": first.bias is not None,
        "padding_mode": first.padding_mode}
    if small:
        settings["stride"] = 1
        if first.kernel_size == (7, 7):
            settings.update(kernel_size=3, padding=1)
    conv = nn.Conv2d(in_channels, first.out_channels, **settings)
    # torchvision's CNNs (resnet, vgg, mobilenet, efficientnet, regnet, mnasnet) initialize
    # their convs this way; nn.Conv2d's default is scaled for a different nonlinearity.
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    _replace(model, first_name, conv)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def check_runs(model: nn.Module, input_shape: tuple[int, int, int], num_classes: int,
               name: str) -> None:
    """Raise UsageError unless `model` turns 2 random images of `input_shape` into (2,
    num_classes) logits, and one image alone into (1, num_classes), as predict gives it one: a
    network that pools a small image to 0 pixels, one built for one image size (vit), or one
    whose forward squeezes the batch dimension fails here, before a search starts, rather
    than in every trial or in predict. The images are on the CPU: check the model as built,
    before it moves to its device."""
    images = torch.randn(2, *input_shape)
    size = "x".join(str(n) for n in input_shape)
    was_training = model.training
    model.eval()
    try:
        for count, taking, what in ((2, f"{size} images", "2 images"),
                                    (1, f"one {size} image alone", "one image alone")):
            try:
                with torch.no_grad():
                    out = model(images[:count])
            except Exception as exc:  # Any failure means the same to the user: pick another.
                raise UsageError(f"architecture {shorten(name)!r} cannot take {taking} (C x H "
                                 f"x W): {_first_line(str(exc), exc, 160)}") from None
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            if shape != (count, num_classes):
                raise UsageError(f"architecture {shorten(name)!r} turns {what} of {size} into "
                                 f"{shorten(str(shape))}; expected logits of shape ({count}, "
                                 f"{num_classes})")
    finally:
        model.train(was_training)
    _check_trains(model, images, name, size)


def _check_trains(model: nn.Module, images: torch.Tensor, name: str, size: str) -> None:
    """Raise UsageError unless `model` takes a training step on `images`: a network with
    nothing to train (no parameters, or all frozen) or whose training pass fails would fail
    every trial, each with a traceback of the user's code."""
    if not any(p.requires_grad for p in model.parameters()):
        raise UsageError(f"architecture {shorten(name)!r} has no parameter to train (it has "
                         "none, or every one is frozen: requires_grad False)")
    was_training = model.training
    model.train()
    try:
        output = model(images)
        loss = F.cross_entropy(output, torch.zeros(len(images), dtype=torch.long,
                                                    device=images.device))
        loss.backward()
    except Exception as exc:  # noqa: BLE001 - the user's module: any failure is theirs
        raise UsageError(f"architecture {shorten(name)!r} cannot train on {size} images "
                         f"(C x H x W): {_first_line(str(exc), exc, 160)}") from None
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def load_weights(model: nn.Module, path: Path) -> str:
    """Copy the tensors of the state dict in `path` into `model`, for fine-tuning; return one
    line for the log saying what was loaded.

    The first conv and the classifier may differ in shape from the file's (the data's channels
    and classes are not ImageNet's): they keep their random initialization, except that a
    first conv for 1 channel starts from the sum of an RGB kernel of the same size over its
    channels (a gray image seen as R = G = B gets the same response). Any other difference is
    an error: the file is for another network.
    """
    state = _read_state_dict(path)
    own = model.state_dict()
    first_conv, classifier = _replaceable_layers(model)
    replaceable = {first_conv, classifier} - {""}
    loaded: dict[str, torch.Tensor] = {}
    adapted: list[str] = []
    reinitialized: list[str] = []
    missing: list[str] = []
    mismatched: list[str] = []
    for key, tensor in own.items():
        theirs = state.get(key)
        if theirs is None:
            # Networks saved before batch norm counted its batches lack these counters.
            if not key.endswith("num_batches_tracked"):
                missing.append(key)
        elif theirs.shape == tensor.shape:
            loaded[key] = theirs
        elif key == f"{first_conv}.weight" and _gray_from_rgb(theirs, tensor):
            loaded[key] = theirs.sum(dim=1, keepdim=True)
            adapted.append(key)
        elif key.rpartition(".")[0] in replaceable:
            reinitialized.append(key)
        else:
            mismatched.append(f"{key} (file {tuple(theirs.shape)}, model {tuple(tensor.shape)})")
    unexpected = [key for key in state if key not in own and not _auxiliary(key)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} of the model's {len(own)} tensors are not in the file "
                        f"({_first(missing)})")
    if mismatched:
        problems.append(f"{len(mismatched)} differ in shape ({_first(mismatched)})")
    if unexpected:
        problems.append(f"the file holds {len(unexpected)} tensors the model lacks "
                        f"({_first(unexpected)})")
    if problems:
        # Another network's file fails all three ways; the first problem says most.
        raise UsageError(shorten(f"{shorten(str(path), 100)} does not match the model: "
                                 + "; ".join(problems), 390))
    model.load_state_dict({**own, **loaded})
    summary = f"loaded {len(loaded)} of {len(own)} tensors from {path}"
    if adapted:
        summary += f"; summed over the file's 3 input channels: {', '.join(adapted)}"
    if reinitialized:
        summary += f"; re-initialized: {', '.join(reinitialized)}"
    return summary


# What wrappers put before every key of a network's state dict: DataParallel and
# DistributedDataParallel ("module."), torch.compile ("_orig_mod.").
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    """The state dict in `path`: saved bare, or as the "state_dict" or "model" entry of a
    checkpoint (Lightning's and timm's, and most training scripts'), with the prefixes of a
    wrapped network (WRAPPER_PREFIXES, as many as it was wrapped in) taken off its keys."""
    shown = shorten(str(path), 200)
    if not path.is_file():
        raise UsageError(f"weights file {shown} does not exist or is not a file")
    try:
        # weights_only: unpickling an arbitrary file runs arbitrary code.
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise UsageError(f"weights file {shown} cannot be read: {exc.strerror or exc}") from None
    except Exception as exc:  # torch.load reports a bad file with many exception types.
        # A refusal's cause follows paragraphs of advice, which would not help here.
        cause = str(exc).partition("WeightsUnpickler error:")[2] or str(exc)
        reason = _first_line(cause.split(". ")[0], exc, 120)
        if " " not in reason:  # a bare token (a text file's bytes read as a key: '101')
            reason = f"{type(exc).__name__} {reason}"
        raise UsageError(f"weights file {shown} is not a PyTorch file that loads with "
                         f"weights_only=True: {reason}") from None
    if isinstance(saved, Mapping):
        for entry in ("state_dict", "model"):
            if isinstance(saved.get(entry), Mapping):
                saved = saved[entry]
                break
    if not (isinstance(saved, Mapping) and saved
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in saved.items())):
        raise UsageError(f"weights file {shown} holds a {type(saved).__name__} that is not a "
                         "state dict (names to tensors, saved bare or as the 'state_dict' or "
                         "'model' entry of a dict)")
    while prefix := next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in saved)),
                         None):
        saved = {key.removeprefix(prefix): tensor for key, tensor in saved.items()}
    return saved


def _replaceable_layers(model: nn.Module) -> tuple[str, str]:
    """The names of the layers the adaptation may replace: the first conv, and the classifier,
    the last Linear or Conv2d (squeezenet's classifier is a 1x1 conv)."""
    layers = [name for name, module in model.named_modules()
              if isinstance(module, (nn.Linear, nn.Conv2d))]
    convs = [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]
    return (convs[0] if convs else ""), (layers[-1] if layers else "")


def _gray_from_rgb(theirs: torch.Tensor, own: torch.Tensor) -> bool:
    return (theirs.dim() == 4 and theirs.shape[1] == 3 and own.shape[1] == 1
            and theirs.shape[0] == own.shape[0] and theirs.shape[2:] == own.shape[2:])


def _auxiliary(key: str) -> bool:
    """A tensor of the file the model may lack: batch norm's counter, or an auxiliary
    classifier (googlenet's aux1 and aux2, inception_v3's AuxLogits; built without here)."""
    return key.endswith("num_batches_tracked") or key.lower().startswith("aux")


def _first(items: list[str]) -> str:
    shown = ", ".join(shorten(item, 80) for item in items[:_LISTED])
    return shown + (", ..." if len(items) > _LISTED else "")


def _first_line(text: str, exc: Exception, limit: int) -> str:
    """The first non-blank line of `text` (an exception's message), or the exception's type."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return shorten(lines[0] if lines else type(exc).__name__, limit)
