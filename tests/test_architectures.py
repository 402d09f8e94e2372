"""Tier 1: torchvision's networks by name, their stems on small images, and local weights.

Random initialization only (nothing is downloaded); forward passes of 2 small images.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from tuning.architectures import (
    TORCHVISION_ARCHITECTURES,
    build_torchvision,
    check_runs,
    is_torchvision_architecture,
    load_weights,
)
from tuning.errors import UsageError

CLASSES = 10


def _assert_one_line(error: pytest.ExceptionInfo[UsageError]) -> str:
    message = str(error.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def _first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def _logits(model: nn.Module, input_shape: tuple[int, int, int]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(torch.randn(2, *input_shape))


def test_registry_is_torchvisions_classification_models() -> None:
    assert list(TORCHVISION_ARCHITECTURES) == sorted(TORCHVISION_ARCHITECTURES)
    assert {"resnet18", "mobilenet_v3_small", "efficientnet_b0", "vit_b_16"} <= set(
        TORCHVISION_ARCHITECTURES)
    assert is_torchvision_architecture("resnet18")
    assert not is_torchvision_architecture("fasterrcnn_resnet50_fpn")
    assert not is_torchvision_architecture("cnn")


def test_resnet18_keeps_a_small_images_resolution_through_the_stem() -> None:
    model = build_torchvision("resnet18", (1, 28, 28), CLASSES)
    assert model.conv1.in_channels == 1
    assert model.conv1.stride == (1, 1)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.padding == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    seen: list[tuple[int, ...]] = []
    model.layer1.register_forward_hook(lambda module, args, out: seen.append(out.shape[2:]))
    assert _logits(model, (1, 28, 28)).shape == (2, CLASSES)
    assert seen == [(28, 28)]


def test_resnet18_keeps_its_stem_on_larger_images() -> None:
    model = build_torchvision("resnet18", (3, 96, 96), CLASSES)
    assert model.conv1.in_channels == 3
    assert model.conv1.stride == (2, 2) and model.conv1.kernel_size == (7, 7)
    assert isinstance(model.maxpool, nn.MaxPool2d)
    assert model.fc.out_features == CLASSES
    assert _logits(model, (3, 96, 96)).shape == (2, CLASSES)


def test_larger_gray_images_change_only_the_channels_of_the_first_conv() -> None:
    model = build_torchvision("resnet18", (1, 96, 96), CLASSES)
    assert model.conv1.in_channels == 1
    assert model.conv1.stride == (2, 2) and model.conv1.kernel_size == (7, 7)
    assert isinstance(model.maxpool, nn.MaxPool2d)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "efficientnet_b0"])
def test_mobile_networks_run_on_32x32_with_a_stride_1_stem(name: str) -> None:
    model = build_torchvision(name, (3, 32, 32), CLASSES)
    assert _first_conv(model).stride == (1, 1)
    check_runs(model, (3, 32, 32), CLASSES, name)  # logits of shape (2, CLASSES)


@pytest.mark.parametrize("name", ["xyz", "fasterrcnn_resnet50_fpn", "x" * 10_000 + "\nmore"],
                         ids=["unknown", "detection", "long"])
def test_an_unknown_or_non_classification_name_is_a_usage_error(name: str) -> None:
    with pytest.raises(UsageError, match="unknown architecture") as error:
        build_torchvision(name, (3, 32, 32), CLASSES)
    message = _assert_one_line(error)
    assert "resnet18" in message and "package.module:function" in message


def test_check_runs_passes_resnet18_and_leaves_it_in_training_mode() -> None:
    model = build_torchvision("resnet18", (1, 28, 28), CLASSES)
    check_runs(model, (1, 28, 28), CLASSES, "resnet18")
    assert model.training


def test_check_runs_rejects_a_network_built_for_another_image_size() -> None:
    model = build_torchvision("vit_b_16", (3, 32, 32), CLASSES)
    with pytest.raises(UsageError, match="'vit_b_16' cannot take 3x32x32 images") as error:
        check_runs(model, (3, 32, 32), CLASSES, "vit_b_16")
    assert "224" in _assert_one_line(error)


def test_check_runs_rejects_a_network_that_pools_the_image_away() -> None:
    model = build_torchvision("alexnet", (1, 8, 8), CLASSES)
    with pytest.raises(UsageError, match="'alexnet' cannot take 1x8x8 images") as error:
        check_runs(model, (1, 8, 8), CLASSES, "alexnet")
    _assert_one_line(error)


def test_check_runs_rejects_logits_of_the_wrong_shape() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, CLASSES + 1))
    with pytest.raises(UsageError, match=r"expected logits of shape \(2, 10\)") as error:
        check_runs(model, (3, 4, 4), CLASSES, "mine")
    _assert_one_line(error)


@pytest.fixture(scope="module")
def imagenet_resnet18(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A resnet18 state dict as ImageNet weights are shaped (3 channels, 1000 classes)."""
    path = tmp_path_factory.mktemp("weights") / "resnet18.pt"
    torch.manual_seed(0)
    torch.save(build_torchvision("resnet18", (3, 224, 224), 1000).state_dict(), path)
    return path


def test_imagenet_weights_load_into_a_small_gray_resnet18(imagenet_resnet18: Path) -> None:
    saved = torch.load(imagenet_resnet18, weights_only=True)
    model = build_torchvision("resnet18", (1, 28, 28), CLASSES)
    own_conv1 = model.conv1.weight.clone()
    own_fc = model.fc.weight.clone()
    summary = load_weights(model, imagenet_resnet18)
    state = model.state_dict()
    total = len(state)
    # conv1 (3x3 here, 7x7 in the file) and fc (10 classes, 1000 in the file) stay as built.
    assert summary == (f"loaded {total - 3} of {total} tensors from {imagenet_resnet18}; "
                       "re-initialized: conv1.weight, fc.weight, fc.bias")
    assert torch.equal(state["conv1.weight"], own_conv1)
    assert torch.equal(state["fc.weight"], own_fc)
    for key in ("layer2.1.conv2.weight", "layer3.0.bn1.running_var", "bn1.bias"):
        assert torch.equal(state[key], saved[key])
    assert _logits(model, (1, 28, 28)).shape == (2, CLASSES)


def test_a_gray_first_conv_starts_from_the_rgb_kernels_summed(imagenet_resnet18: Path) -> None:
    saved = torch.load(imagenet_resnet18, weights_only=True)
    model = build_torchvision("resnet18", (1, 96, 96), CLASSES)
    summary = load_weights(model, imagenet_resnet18)
    assert "summed over the file's 3 input channels: conv1.weight" in summary
    assert "re-initialized: fc.weight, fc.bias" in summary
    assert torch.allclose(model.conv1.weight, saved["conv1.weight"].sum(dim=1, keepdim=True))


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_a_checkpoints_state_dict_entry_loads(tmp_path: Path, wrapper: str) -> None:
    model = build_torchvision("resnet18", (3, 32, 32), CLASSES)
    path = tmp_path / "checkpoint.pt"
    torch.save({wrapper: model.state_dict(), "epoch": 3}, path)
    fresh = build_torchvision("resnet18", (3, 32, 32), CLASSES)
    summary = load_weights(fresh, path)
    assert "re-initialized" not in summary
    assert torch.equal(fresh.conv1.weight, model.conv1.weight)


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "_orig_mod.module."])
def test_the_weights_of_a_wrapped_network_load(tmp_path: Path, prefix: str) -> None:
    """Saved from DataParallel, DistributedDataParallel or torch.compile: every key has the
    wrapper's prefix."""
    model = build_torchvision("resnet18", (3, 32, 32), CLASSES)
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {prefix + k: v for k, v in model.state_dict().items()}}, path)
    fresh = build_torchvision("resnet18", (3, 32, 32), CLASSES)
    assert "re-initialized" not in load_weights(fresh, path)
    assert torch.equal(fresh.conv1.weight, model.conv1.weight)


def test_batch_norm_counters_and_auxiliary_classifiers_may_differ(tmp_path: Path) -> None:
    model = build_torchvision("resnet18", (3, 32, 32), CLASSES)
    state = {k: v for k, v in model.state_dict().items() if "num_batches_tracked" not in k}
    state["aux1.fc.weight"] = torch.zeros(2, 2)
    path = tmp_path / "old.pt"
    torch.save(state, path)
    load_weights(build_torchvision("resnet18", (3, 32, 32), CLASSES), path)


def test_another_networks_weights_are_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "mobilenet.pt"
    torch.save(build_torchvision("mobilenet_v3_small", (3, 32, 32), CLASSES).state_dict(), path)
    with pytest.raises(UsageError, match="does not match the model") as error:
        load_weights(build_torchvision("resnet18", (3, 32, 32), CLASSES), path)
    assert "are not in the file (conv1.weight, bn1.weight, bn1.bias, ...)" in _assert_one_line(
        error)


def test_a_middle_layer_of_another_shape_is_a_usage_error(tmp_path: Path) -> None:
    model = build_torchvision("resnet18", (3, 32, 32), CLASSES)
    state = model.state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    path = tmp_path / "edited.pt"
    torch.save(state, path)
    with pytest.raises(UsageError, match=r"1 differ in shape \(layer2.0.conv1.weight \(file "
                                         r"\(128, 64, 5, 5\), model \(128, 64, 3, 3\)\)\)"):
        load_weights(model, path)


def test_a_file_with_tensors_the_model_lacks_is_a_usage_error(tmp_path: Path) -> None:
    model = build_torchvision("resnet18", (3, 32, 32), CLASSES)
    path = tmp_path / "extra.pt"
    torch.save({**model.state_dict(), "head2.weight": torch.zeros(3)}, path)
    with pytest.raises(UsageError, match=r"holds 1 tensors the model lacks \(head2.weight\)"):
        load_weights(model, path)


def _write_garbage(path: Path) -> None:
    path.write_bytes(b"\x00\x01 not a pytorch file \xff" * 100)


def _write_pickled_object(path: Path) -> None:
    # weights_only refuses to build arbitrary objects.
    path.write_bytes(pickle.dumps({"weights": Path("x")}, protocol=2))


def _write_non_tensors(path: Path) -> None:
    torch.save({"epoch": 3, "lr": 0.1}, path)


def _write_list(path: Path) -> None:
    torch.save([torch.zeros(2)], path)


@pytest.mark.parametrize(("write", "expected"), [
    (_write_garbage, "is not a PyTorch file that loads with weights_only=True"),
    (_write_pickled_object, "is not a PyTorch file that loads with weights_only=True"),
    (_write_non_tensors, "holds a dict that is not a state dict"),
    (_write_list, "holds a list that is not a state dict"),
    (lambda path: path.write_text("hello weights\n"),
     "is not a PyTorch file that loads with weights_only=True: KeyError 101"),
])
def test_a_file_that_is_not_a_state_dict_is_a_usage_error(
        tmp_path: Path, write: Callable[[Path], None], expected: str) -> None:
    path = tmp_path / "weights.pt"
    write(path)
    model = build_torchvision("mobilenet_v3_small", (3, 32, 32), CLASSES)
    with pytest.raises(UsageError, match=expected) as error:
        load_weights(model, path)
    _assert_one_line(error)


@pytest.mark.parametrize("name", ["missing.pt", ""])
def test_a_missing_file_or_a_folder_is_a_usage_error(tmp_path: Path, name: str) -> None:
    model = build_torchvision("mobilenet_v3_small", (3, 32, 32), CLASSES)
    with pytest.raises(UsageError, match="does not exist or is not a file") as error:
        load_weights(model, tmp_path / name)
    _assert_one_line(error)
