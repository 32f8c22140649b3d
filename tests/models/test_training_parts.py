"""Loss, optimizer and scheduler built from config names; the thesis's early-stopping rule."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.label_smoothing_ce import LabelSmoothingCrossEntropy
from models.training_parts import (
    build_loss,
    build_optimizer,
    build_scheduler,
    check_hardware,
    early_stopping_patience,
    use_compile_cache,
)
from tests.helpers import ROOT
from utils.configuration import validate
from utils.errors import ConfigError


def optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)


def test_lambda_scheduler_strings_become_functions_of_the_epoch() -> None:
    opt = optimizer()
    scheduler = build_scheduler("LambdaLR", {"lr_lambda": "lambda epoch: 0.5 ** epoch"}, opt)["scheduler"]
    lrs = []
    for _ in range(3):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    assert lrs == [1.0, 0.5, 0.25]


@pytest.mark.parametrize("text, message", [
    ("__import__('os').system('true')", "must be a string 'lambda epoch: ...'"),
    ("lambda epoch: (", "is not a valid lambda"),
])
def test_lambda_strings_other_than_lambdas_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_scheduler("LambdaLR", {"lr_lambda": text}, optimizer())


def test_lambda_strings_cannot_reach_builtins() -> None:
    with pytest.raises(ConfigError, match="lr_scheduler_params for LambdaLR: name 'open' is not defined"):
        build_scheduler("LambdaLR", {"lr_lambda": "lambda epoch: open('x')"}, optimizer())


def test_reduce_on_plateau_monitors_the_validation_loss() -> None:
    config = build_scheduler("ReduceLROnPlateau", {"factor": 0.1, "patience": 5}, optimizer())
    assert config["monitor"] == "valid_loss" and config["interval"] == "epoch"
    assert build_scheduler(None, None, optimizer()) is None


def test_bad_parameters_name_the_part_they_belong_to() -> None:
    with pytest.raises(ConfigError, match="lr_scheduler_params for MultiStepLR"):
        build_scheduler("MultiStepLR", {"milestone": [3]}, optimizer())
    with pytest.raises(ConfigError, match="optimizer_params for AdamW"):
        build_optimizer("AdamW", {"learning_rate": 0.1}, [torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(ConfigError, match="loss_params for CrossEntropyLoss"):
        build_loss("CrossEntropyLoss", {"smoothing": 0.1})


def _adamw_weights_after_steps(params: dict) -> tuple[torch.optim.Optimizer, torch.Tensor]:
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(64, 32))
    optimizer = build_optimizer("AdamW", params, [weight])
    for _ in range(5):
        weight.grad = torch.randn_like(weight)
        optimizer.step()
    return optimizer, weight.detach()


def test_the_fused_optimizer_is_used_unless_the_config_picks_an_implementation() -> None:
    fused, fused_weight = _adamw_weights_after_steps({"lr": 0.01, "weight_decay": 0.6})
    assert fused.defaults["fused"] is True
    # The same update as PyTorch's own implementation, to float rounding.
    plain, plain_weight = _adamw_weights_after_steps({"lr": 0.01, "weight_decay": 0.6, "foreach": False})
    assert not plain.defaults["fused"]
    assert torch.allclose(fused_weight, plain_weight, atol=1e-6)
    assert not (fused_weight == _adamw_weights_after_steps({"lr": 0.02, "weight_decay": 0.6})[1]).all()
    assert not build_optimizer("AdamW", {"fused": False}, [torch.nn.Parameter(torch.zeros(1))]).defaults["fused"]
    # Optimizers without a fused implementation are built as before.
    assert isinstance(build_optimizer("RMSprop", {"lr": 0.01}, [torch.nn.Parameter(torch.zeros(1))]),
                      torch.optim.RMSprop)


def test_losses_are_ours_or_torch_nn() -> None:
    assert isinstance(build_loss("LabelSmoothingCrossEntropy", {"smoothing": 0.2}), LabelSmoothingCrossEntropy)
    assert isinstance(build_loss("NLLLoss", None), torch.nn.NLLLoss)


@pytest.mark.parametrize("values, patience", [
    ({}, 15),
    ({"early_stopping_patience": 4}, 4),
    ({"lr_scheduler": "ReduceLROnPlateau", "lr_scheduler_params": {"factor": 0.1, "patience": 5}}, 15),
    ({"lr_scheduler": "ReduceLROnPlateau", "lr_scheduler_params": {"factor": 0.1, "patience": 7}}, 21),
    ({"lr_scheduler": "ReduceLROnPlateau", "lr_scheduler_params": {"factor": 0.1}}, 15),
    ({"lr_scheduler": "ReduceLROnPlateau", "lr_scheduler_params": None}, 15),
])
def test_early_stopping_follows_the_thesis_rule_unless_set(values: dict, patience: int) -> None:
    assert early_stopping_patience(validate(values)) == patience


def test_sync_batchnorm_on_the_cpu_is_refused() -> None:
    with pytest.raises(ConfigError, match="sync_batchnorm: true needs CUDA"):
        check_hardware(validate({"sync_batchnorm": True, "accelerator": "cpu"}))


@pytest.mark.parametrize(("settings", "message"), [
    ({"precision": "bf16-mixed"}, "cuda_graphs: true runs with precision 32-true only, got 'bf16-mixed'"),
    ({"compile": True}, "cuda_graphs: true with compile_mode 'reduce-overhead' would replay CUDA graphs inside"),
    ({"compile": True, "compile_mode": "max-autotune"}, "compile_mode 'max-autotune' would replay"),
    ({"accelerator": "cpu"}, "cuda_graphs: true needs a CUDA GPU"),
])
def test_cuda_graphs_settings_that_cannot_run_are_refused_before_training(settings, message) -> None:
    with pytest.raises(ConfigError, match=message):
        check_hardware(validate({"cuda_graphs": True, "accelerator": "cpu", **settings}))


def test_cuda_graphs_off_leaves_the_same_settings_alone() -> None:
    check_hardware(validate({"accelerator": "cpu", "precision": "bf16-mixed", "compile": True}))


COMPILE_ONCE = """
import sys, torch
from torch._dynamo.utils import counters
from models.training_parts import use_compile_cache
from utils.configuration import validate
use_compile_cache(validate({"compile": True, "compile_cache_dir": sys.argv[1]}))
torch.compile(lambda x: (x.sin() * 2 + 1).relu())(torch.randn(16))
print(dict(counters["inductor"]))
"""


@pytest.mark.slow  # torch.compile on the CPU in two processes
def test_a_compile_cache_dir_keeps_what_one_process_compiled_for_the_next(tmp_path: Path) -> None:
    """Two processes, as two runs on fresh machines sharing a folder: the second finds the first's compiled graph
    there (torch's own default folder is elsewhere, so a hit can only come from compile_cache_dir)."""
    env = {key: value for key, value in os.environ.items() if key != "TORCHINDUCTOR_CACHE_DIR"}
    folder = tmp_path / "kept" / "compiled"
    runs = [subprocess.run([sys.executable, "-c", COMPILE_ONCE, str(folder)], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300) for _ in range(2)]
    assert all(run.returncode == 0 for run in runs), runs[-1].stderr[-2000:]
    first, second = (run.stdout.strip().splitlines()[-1] for run in runs)
    assert "'fxgraph_cache_miss': 1" in first and "'fxgraph_cache_hit': 1" in second
    assert (folder / "fxgraph").is_dir()


def test_compile_cache_dir_is_left_alone_without_compile_and_named_when_it_cannot_be_made(monkeypatch,
                                                                                        tmp_path: Path) -> None:
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    use_compile_cache(validate({"compile": False, "compile_cache_dir": str(tmp_path / "unused")}))
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ and not (tmp_path / "unused").exists()
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(ConfigError, match=r"compile_cache_dir '.*file/cache' cannot be created \(Not a directory\)$"):
        use_compile_cache(validate({"compile": True, "compile_cache_dir": str(tmp_path / "file" / "cache")}))
