"""The benchmark scripts run end to end on tiny settings and print the tables they promise (no timing asserted)."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from benchmarks import data_pipeline
from benchmarks.common import generate_prepared, markdown_table
from benchmarks.epoch_time import PHASES
from benchmarks.training_throughput import C50_EPOCHS, TRAIN_IMAGES, VALID_IMAGES
from datasets.prepared.stanford_data_module import StanfordCarsDataModule
from tests.helpers import ROOT, run_module
from utils.cli import run_main
from utils.configuration import validate

NUMBER = r"\d+(?:\.\d+)?"


def run_script(module: str, *args: str) -> str:
    result = run_module(module, list(args))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def table_rows(output: str) -> list[list[str]]:
    """The cells of the markdown table's body rows in a script's output."""
    lines = [line for line in output.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_generated_data_follows_the_prepared_contract_and_loads(tmp_path: Path) -> None:
    root = generate_prepared(tmp_path / "stanford", train_images=3, test_images=2)
    labels = pd.read_csv(root / "train_labels.csv")
    assert list(labels.columns) == ["image_fname", "class", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class_name"]
    for row in labels.itertuples():
        with Image.open(root / "train" / row.image_fname) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            assert 600 <= image.width <= 800 and 0.6 * image.width - 1 <= image.height <= 0.75 * image.width
            assert 1 <= row.bbox_x1 < row.bbox_x2 <= image.width and 1 <= row.bbox_y1 < row.bbox_y2 <= image.height
    module = StanfordCarsDataModule(validate({"stanford_data_path": str(root), "num_workers": 0,
                                              "image_size": [32, 32], "cache_dir": str(tmp_path / "cache")}))
    module.setup("fit")
    image, label = module.datasets["train"][0]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32) and label == 0


def test_markdown_table_has_header_alignment_and_rows() -> None:
    assert markdown_table(["a", "b"], [["x", "1"]]).splitlines() == ["| a | b |", "| :--- | ---: |", "| x | 1 |"]


@pytest.mark.slow  # the benchmark script's own run
def test_data_pipeline_prints_every_path_with_a_ratio_to_the_baseline() -> None:
    output = run_script("benchmarks.data_pipeline", "--images", "16", "--epochs", "1", "--batch-size", "8")
    rows = table_rows(output)
    names = [row[0] for row in rows]
    assert [name.split()[0] for name in names[:3]] == ["(a)", "(b0)", "(b)"]
    for _, rate, ratio in rows:
        assert re.fullmatch(NUMBER, rate) and float(rate) > 0
        assert re.fullmatch(NUMBER + "x", ratio)
    assert rows[0][2] == "1.00x"
    # Each ratio is that row's rate over the baseline's (to the rounding of the printed rates).
    for _, rate, ratio in rows[1:]:
        assert float(ratio[:-1]) == pytest.approx(float(rate) / float(rows[0][1]), abs=0.02)
    assert re.search(r"one-off cache build: " + NUMBER + " s for 17 images", output)
    if torch.cuda.is_available() and importlib.util.find_spec("datasets.device_augmentation.augmenter"):
        assert names[3].startswith("(c)")
    else:
        assert len(rows) == 3 and "(c) project, cache" in output and "skipped" in output


@pytest.mark.skipif(importlib.util.find_spec("models.arch_dict") is None, reason="models/arch_dict.py not merged")
@pytest.mark.slow  # the benchmark script's own run
def test_training_throughput_prints_each_setting_and_a_consistent_c50_projection() -> None:
    output = run_script("benchmarks.training_throughput", "--batches", "2", "--warmup", "1", "--batch-size", "4",
                        "--valid-batch-size", "4",
                        "--image-size", "32", "--precisions", "32-true", "bf16-mixed", "--channels-last", "on",
                        "--workers", "0", "--threads", "1", "--device", "cpu")
    rows = table_rows(output)
    assert [row[0] for row in rows] == [f"{precision}, channels_last on, compile off"
                                        for precision in ("32-true", "bf16-mixed")]
    for _, model, train, fraction, valid, speedup, minutes in rows:
        assert all(float(value) > 0 for value in (model, train, valid, minutes))
        assert float(fraction.rstrip("%")) == pytest.approx(100 * float(train) / float(model), abs=2)
        projected = C50_EPOCHS * (TRAIN_IMAGES / float(train) + VALID_IMAGES / float(valid)) / 60
        assert float(minutes) == pytest.approx(projected, rel=0.02)
        assert re.fullmatch(NUMBER + "x", speedup)
    assert rows[0][5] == "1.00x"
    assert "fastest setting" in output and "device cpu" in output
    # each setting is also printed as soon as it is measured, for runs cut short by a time limit
    assert output.index("  bf16-mixed, channels_last on, compile off: model-only ") < output.index("| setting")


def test_generation_refuses_a_non_empty_folder_it_did_not_write_and_keeps_its_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "train_labels.csv").write_text("precious")
    with pytest.raises(SystemExit) as exit_info:
        run_main(data_pipeline.main, ["--images", "2", "--epochs", "1", "--data-dir", str(tmp_path / "real")])
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2 and "not generated by the benchmarks" in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert (tmp_path / "real" / "train_labels.csv").read_text() == "precious"
    first = generate_prepared(tmp_path / "again", 2, 1)
    written = (first / "train" / "00001.jpg").stat().st_mtime_ns
    generate_prepared(tmp_path / "again", 2, 1)  # the same arguments: reused, not rewritten
    assert (first / "train" / "00001.jpg").stat().st_mtime_ns == written
    generate_prepared(tmp_path / "again", 3, 1)  # other arguments: a folder it wrote itself is replaced
    assert len(list((tmp_path / "again" / "train").iterdir())) == 3


@pytest.mark.slow  # the benchmark script's own run
def test_epoch_time_projects_c50_from_the_epochs_of_one_real_run() -> None:
    output = run_script("benchmarks.epoch_time", "--train-images", "16", "--test-images", "8", "--epochs", "3",
                        "--set", "image_size=[32, 32]", "num_workers=0", "batch_size=8")
    cells = {row[0]: row[1] for row in table_rows(output)}
    whole, first = float(cells["whole 3-epoch run (s)"]), float(cells["first epoch, start-up included (s)"])
    later = [float(value) for value in cells["later epochs (s)"].split()]
    steady = float(cells["steady epoch: median of the later ones (s)"])
    assert len(later) == 2 and 0 < first <= whole and steady == pytest.approx(sum(later) / 2, abs=0.011)
    projected = (whole + (C50_EPOCHS - 3) * steady) / 60
    assert float(cells[f"projected C-50: {C50_EPOCHS} epochs (min)"]) == pytest.approx(projected, abs=0.06)
    assert "no verdict" in output  # tiny splits: no claim about the 10-minute target
    # each epoch is also printed as soon as metrics.csv has it, for runs cut short by a time limit
    assert output.count("  metrics.csv: ") == 4 and output.index("  metrics.csv: 2,") < output.index("| measure")
    # every phase measured; the first epoch's, up to its validation end, fit in its time (printed to 0.1 s)
    phases = {row[0]: row[1:] for row in table_rows(output) if row[0] in [name for name, _, _ in PHASES]}
    assert len(phases) == len(PHASES) and all(value != "-" for values in phases.values() for value in values)
    assert float(phases["training batches"][1]) > 0
    assert sum(float(values[0]) for name, values in phases.items() if "epoch end" not in name) <= first + 0.05


@pytest.mark.slow  # the benchmark script's own run
def test_epoch_time_versus_runs_a_second_config_and_prints_both_side_by_side() -> None:
    output = run_script("benchmarks.epoch_time", "--train-images", "16", "--test-images", "8", "--epochs", "2",
                        "--set", "image_size=[32, 32]", "num_workers=0", "batch_size=8",
                        "--versus", "async_checkpoints=false")
    header = next(line for line in output.splitlines() if line.startswith("| measure"))
    assert [cell.strip() for cell in header.strip("|").split("|")] == ["measure", "as set",
                                                                          "versus async_checkpoints=false"]
    cells = {row[0]: row[1:] for row in table_rows(output)}
    steady = [float(value) for value in cells["steady epoch: median of the later ones (s)"]]
    ratio = float(cells["steady epoch, first run / this run"][1].rstrip("x"))
    assert ratio == pytest.approx(steady[0] / steady[1], rel=0.05)  # the steady epochs are printed rounded
    assert output.count("  metrics.csv: ") == 6  # both runs' epochs, as they finish
    phases = {row[0]: row[1:] for row in table_rows(output) if row[0] in [name for name, _, _ in PHASES]}
    assert all(len(values) == 4 for values in phases.values())
    # with 2 epochs only the first has a next epoch: its time between epochs is the one measured
    assert all("-" not in values for name, values in phases.items() if "next epoch" not in name)
    assert [value != "-" for value in phases[PHASES[-1][0]]] == [True, False, True, False]


def test_epoch_printer_prints_only_its_own_runs_metrics(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A --versus run writes its metrics.csv beside the first run's: the printer must not echo the first one."""
    from benchmarks.epoch_time import EpochPrinter

    (tmp_path / "first").mkdir()
    (tmp_path / "first" / "metrics.csv").write_text("epoch,epoch_time_s\n0,9.5\n1,9.25\n")
    printer = EpochPrinter(tmp_path)
    printer.start()
    (tmp_path / "second").mkdir()
    (tmp_path / "second" / "metrics.csv").write_text("epoch,epoch_time_s\n0,1.5\n")
    printer.done.set()
    printer.join()
    assert capsys.readouterr().out.splitlines() == ["  metrics.csv: epoch,epoch_time_s", "  metrics.csv: 0,1.5"]


def test_memory_traffic_counts_reads_and_writes_of_kernels_and_nothing_for_views() -> None:
    from benchmarks.diagnostics.op_count import count_bytes

    a, b, out = torch.rand(1000), torch.rand(1000), torch.empty(1000)
    one = torch.rand(1)
    assert count_bytes(lambda: a + b) == 3 * 4000
    assert count_bytes(lambda: torch.add(a, b, out=out)) == 3 * 4000  # the out= buffer is written, not read
    assert count_bytes(lambda: a.clamp_(0, 1)) == 2 * 4000  # in place: read and written
    assert count_bytes(lambda: a * one.expand(1000)) == 4000 + 4 + 4000  # a broadcast input's one element
    assert count_bytes(lambda: a.view(10, 100).t().unsqueeze(0)) == 0
    assert count_bytes(lambda: torch._foreach_mul_([a, b], 2.0)) == 4 * 4000  # a returned-nothing in-place op


@pytest.mark.slow  # the benchmark script's own run
def test_op_count_reports_the_network_and_each_device_augmentation() -> None:
    output = run_script("benchmarks.diagnostics.op_count", "--batch-size", "2", "--image-size", "32")
    cells = {row[0].strip(): int(row[1]) for row in table_rows(output) if row[1].isdigit()}  # both tables
    network = cells["network: forward + backward (training)"]
    preprocessing_label = ("preprocessing: uint8 -> float, device augmentations (parameters from the workers), "
                           "Normalize")
    preprocessing = cells[preprocessing_label]
    assert network > cells["network: forward (validation)"] > 0
    parts = {name: value for name, value in cells.items() if name.startswith("of which") and "applying" in name}
    # the flip folds into the affine warp; conversion and Normalize are the rest
    assert [name.split(" (")[0] for name in parts] == ["of which RandomHorizontalFlip + RandomAffine",
                                                       "of which ColorJitter"]
    assert sum(parts.values()) < preprocessing
    # drawing the parameters on the device adds their sampling and preparation to the device's work
    assert cells["for comparison: preprocessing drawing the parameters on the device"] > preprocessing
    share = int(re.search(r"runs at (\d+)% of the network alone", output).group(1))
    assert share == round(100 * network / (network + preprocessing))
    megabytes = {row[0].strip(): float(row[2]) for row in table_rows(output) if len(row) == 3 and row[1].isdigit()}
    recorded = megabytes["the same as a CUDA graph records it (channels mixed by multiply-adds)"]
    assert megabytes["network: forward + backward (training)"] > megabytes["network: forward (validation)"] > recorded
    assert recorded > 0 and megabytes[preprocessing_label] > 0
    graph_share = int(re.search(r"if time follows bytes moved, at (\d+)%", output).group(1))
    network_mb = megabytes["network: forward + backward (training)"]
    assert abs(graph_share - 100 * network_mb / (network_mb + recorded)) <= 1  # the table's MB are rounded
    # A whole Lightning iteration holds the model-only loop's operators plus the preprocessing and the metrics.
    model_only = cells["model-only loop: forward, loss, backward, optimizer step"]
    full = cells["Lightning's Trainer with NetModule (the full pipeline's main process)"]
    extra = cells["of which not in the model-only loop"]
    assert model_only >= network and full - extra <= model_only and extra > preprocessing
    share = int(re.search(r"runs at (\d+)% of model-only", output).group(1))
    assert share == round(100 * model_only / full)


@pytest.mark.slow  # the benchmark script's own run
def test_loop_overhead_reports_each_loop_against_the_plain_one() -> None:
    output = run_script("benchmarks.diagnostics.loop_overhead", "--steps", "60", "--rounds", "1")
    rows = {row[0]: (float(row[1]), float(row[2])) for row in table_rows(output)}
    assert list(rows) == ["plain PyTorch loop", "Lightning, no progress bar", "Lightning, progress bar"]
    plain = rows["plain PyTorch loop"][0]
    assert plain > 0 and rows["plain PyTorch loop"][1] == 0
    for per_step, added in rows.values():
        assert added == pytest.approx(per_step - plain, abs=0.002)


def test_the_device_row_runs_the_modules_own_preprocessing() -> None:
    from datasets.device_augmentation.augmenter import DeviceAugmenter, device_augmentation_settings
    from models.net_module import NetModule

    config = validate({"gpu_augmentations": True, "image_size": [32, 32]})
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    settings = device_augmentation_settings(config)
    drawn = DeviceAugmenter(settings["image"], settings["tensor"]).draw(tuple(images.shape))
    out = data_pipeline.device_consumer(config, torch.device("cpu"))([images, torch.zeros(4), drawn])
    module = NetModule.from_config(config, 3, ["a", "b", "c"])
    torch.testing.assert_close(out, module.preprocess(images, train=True, drawn=drawn))


@pytest.mark.slow  # the benchmark script's own run
def test_step_profile_reports_the_hosts_time_per_lightning_action() -> None:
    output = run_script("benchmarks.diagnostics.step_profile", "--batches", "3", "--warmup", "1",
                        "--set", "image_size=[32,32]", "batch_size=4", "num_workers=0", "accelerator=cpu")
    rows = {row[0]: float(row[1]) for row in table_rows(output)}
    step = rows["run_training_batch"]
    for part in ("[Strategy]SingleDeviceStrategy.training_step", "[Strategy]SingleDeviceStrategy.backward",
                 "[LightningModule]NetModule.on_after_batch_transfer"):
        assert 0 < rows[part] <= step  # nested in the training batch, or (the preprocessing) run before it
    wall = float(re.search(rf"wall time ({NUMBER}) ms per step", output).group(1))
    # `step` is the median of the 3 timed batches, `wall` their mean: the median of three non-negative times is at
    # most 1.5x their mean, whatever the machine's load does to one batch.
    assert step <= 1.5 * wall
    assert "no CUDA GPU in use" in output


def test_busy_seconds_counts_overlapping_kernels_once() -> None:
    from benchmarks.diagnostics.step_profile import busy_seconds

    assert busy_seconds([(5.0, 6.0), (0.0, 2.0), (1.0, 3.0), (1.5, 2.5)]) == pytest.approx(4.0)
    assert busy_seconds([]) == 0


def test_kernel_rows_rank_device_activities_per_step() -> None:
    from benchmarks.diagnostics.step_profile import kernel_rows

    events = [("conv", 0.0, 0.004), ("copy", 0.001, 0.002), ("conv", 0.010, 0.014), ("relu", 0.020, 0.021)]
    busy, rows = kernel_rows(events, steps=2)
    assert busy == pytest.approx(0.009)
    assert rows == [["conv", "1.0", "4.000"], ["relu", "0.5", "0.500"], ["copy", "0.5", "0.500"]] or \
        rows == [["conv", "1.0", "4.000"], ["copy", "0.5", "0.500"], ["relu", "0.5", "0.500"]]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
@pytest.mark.slow  # the benchmark script's own run
def test_step_graph_needs_cuda_unless_it_only_checks_its_plumbing() -> None:
    refused = run_module("benchmarks.diagnostics.step_graph", ["--batches", "2"])
    assert refused.returncode != 0 and "needs a CUDA GPU" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    # a dry run captures no graph (the whole step's or TrainingGraph's): those variants then train exactly as the
    # eager run does, from the same weights on the same batches
    output = run_script("benchmarks.diagnostics.step_graph", "--dry-run", "--batches", "3", "--image-size", "32",
                        "--batch-size", "4", "--variants", "b", "e", "g")
    rows = table_rows(output)
    assert [row[0][:3] for row in rows] == ["(b)", "(e)", "(g)"]
    assert all(float(row[1]) > 0 for row in rows)
    assert float(rows[0][4]) == 0 and float(rows[1][4]) == 0
    assert rows[2][4] == "-"  # (g) trains on preprocessed uint8 batches: nothing to compare with
    assert "DRY RUN" in output


@pytest.mark.slow  # the benchmark's own run
def test_step_graph_reports_a_failing_variant_and_still_measures_the_others(monkeypatch, capsys) -> None:
    from benchmarks.diagnostics import step_graph

    def fails(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("operation not permitted when stream is capturing\nsecond line")

    monkeypatch.setattr(step_graph, "graph_loop", fails)
    assert step_graph.main(["--dry-run", "--batches", "2", "--image-size", "32", "--batch-size", "4",
                            "--variants", "b", "e"]) == 0
    failed, measured = table_rows(capsys.readouterr().out)
    assert failed[1] == "failed" and failed[4] == "RuntimeError: operation not permitted when stream is capturing"
    assert measured[0].startswith("(e)") and float(measured[1]) > 0


@pytest.mark.slow  # subprocesses of the real command: the default run keeps a faster test of its path
def test_throughput_with_cuda_graphs_refuses_what_cannot_be_graphed() -> None:
    refused = run_module("benchmarks.training_throughput", ["--cuda-graphs", "--device", "cpu"])
    assert refused.returncode != 0 and "--cuda-graphs needs a CUDA GPU" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_each_benchmark_at_the_top_asks_its_question_first_and_the_diagnostics_have_a_readme() -> None:
    folder = ROOT / "benchmarks"
    scripts = [path for path in folder.glob("*.py") if path.name not in {"__init__.py", "common.py"}]
    assert len(scripts) >= 4
    for path in scripts:
        first = (ast.get_docstring(ast.parse(path.read_text())) or "").split("\n")[0]
        assert "?" in first, f"{path.name}'s docstring should open with the question it answers: {first!r}"
    readme = (folder / "diagnostics" / "README.md").read_text()
    for path in (folder / "diagnostics").glob("*.py"):
        assert path.name == "__init__.py" or f"benchmarks.diagnostics.{path.stem}" in readme, path.name
