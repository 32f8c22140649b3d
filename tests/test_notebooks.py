"""The notebooks run top to bottom with nbclient, parameters injected after the `parameters` cell as papermill does."""

from __future__ import annotations

import json
import shlex
import shutil
import tarfile
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
import pytest
import yaml
from jupyter_client.kernelspec import find_kernel_specs
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from datasets.prepared.normalization import compute_normalization, format_for_config
from tests.conftest import write_prepared
from tests.helpers import ROOT, generated_prepared_data, tiny_config

KERNEL = "python3"

pytestmark = [pytest.mark.skipif(KERNEL not in find_kernel_specs(),
                                 reason="no 'python3' Jupyter kernel: pip install ipykernel (dev_requirements.txt)"),
              pytest.mark.slow]  # each test starts a Jupyter kernel; three of them train


def with_parameters(path: Path, parameters: dict[str, Any]) -> nbformat.NotebookNode:
    """The notebook with a cell of `parameters` right after its cell tagged `parameters` (papermill's convention)."""
    notebook = nbformat.read(path, as_version=4)
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    assert notebook.cells[tagged[0]].cell_type == "code"
    assert all(cell.cell_type != "code" for cell in notebook.cells[:tagged[0]]), "parameters must be the first code"
    source = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    injected = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    notebook.cells.insert(tagged[0] + 1, injected)
    return notebook


def execute(notebook: nbformat.NotebookNode, cwd: Path, timeout: int = 300) -> nbformat.NotebookNode:
    # jupyter_client starts a kernel spec whose argv is "python" with this interpreter (sys.executable).
    NotebookClient(notebook, kernel_name=KERNEL, timeout=timeout, resources={"metadata": {"path": str(cwd)}}).execute()
    return notebook


def stdout_of(notebook: nbformat.NotebookNode) -> str:
    return "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.get("outputs", []) if output.get("name") == "stdout")


def test_normalization_notebook_prints_the_library_values_in_config_format(tmp_path: Path) -> None:
    data = write_prepared(tmp_path / "stanford", classes=2, train_per_class=3, test_per_class=1)
    notebook = with_parameters(ROOT / "notebooks" / "normalization_coeffs.ipynb",
                               {"DATA_PATH": str(data), "IMAGE_SIZE": [24, 32]})
    # Run from notebooks/ as Jupyter would: the notebook must find the project's library on its own.
    printed = stdout_of(execute(notebook, ROOT / "notebooks"))
    expected = format_for_config(compute_normalization(data, (24, 32), grayscale=False),
                                 compute_normalization(data, (24, 32), grayscale=True))
    assert expected in printed
    assert yaml.safe_load(expected)["normalization_params_grayscale"]["std"][0] > 0


def colab_parameters(tmp_path: Path) -> tuple[dict[str, Any], Path]:
    """Notebook parameters for a one-epoch CPU run on generated data; returns them and the output folder."""
    data = generated_prepared_data(tmp_path / "data")
    config = tiny_config(tmp_path, data, name="tiny.yml", num_epochs=1)
    output = tmp_path / "elsewhere"
    return {
        "local_project_wdir": str(ROOT),
        "DATA_ON_COLAB": False,
        "CONFIG_PATH": str(config),
        "EXTRA_ARGS": ["-d", str(data), "--set", f"output_path={output}"],
        "EVALUATE": False,
        "EXPORT_FORMAT": None,
    }, output


def test_train_colab_notebook_trains_outside_colab_evaluates_and_exports_the_best_checkpoint(tmp_path: Path) -> None:
    parameters, output = colab_parameters(tmp_path)
    # a string, as `papermill -p EXTRA_ARGS "..."` passes it: split as a shell line
    parameters["EXTRA_ARGS"] = shlex.join(parameters["EXTRA_ARGS"]) + " 'description=two words'"
    parameters.update(EVALUATE=True, EXPORT_FORMAT="onnx")
    # Started outside the project on purpose: the notebook must change to the project folder itself.
    printed = stdout_of(execute(with_parameters(ROOT / "train_colab.ipynb", parameters), tmp_path, timeout=600))
    run_dirs = [path.parent for path in output.glob("*/metrics.csv")]
    assert len(run_dirs) == 1, printed[-3000:]
    assert len(pd.read_csv(run_dirs[0] / "metrics.csv")) == 1  # one epoch, as the config and EXTRA_ARGS asked
    assert yaml.safe_load((run_dirs[0] / "config.yml").read_text())["description"] == "two words"
    assert "running outside Colab" in printed
    assert f"run folder: {run_dirs[0]}" in printed  # train.py's own output was streamed into the notebook
    assert "--resume" not in printed  # nothing to resume the first time
    metrics = json.loads((run_dirs[0] / "evaluation" / "metrics.json").read_text())
    assert metrics["checkpoint"].endswith("best.ckpt") and "top-1 accuracy" in printed
    exported = run_dirs[0] / "export" / f"{run_dirs[0].name}.onnx"
    assert exported.is_file() and f"exported: {exported}" in printed


def fake_colab(folder: Path, monkeypatch) -> None:
    """A `google.colab` package whose drive.mount does nothing, on the kernel's path: the notebook runs as on Colab."""
    package = folder / "fake_colab" / "google" / "colab"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "drive.py").write_text("def mount(path):\n    print('fake mount of Drive at', path)\n")
    monkeypatch.setenv("PYTHONPATH", str(folder / "fake_colab"))


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has an NVIDIA GPU")
def test_train_colab_notebook_stops_on_a_colab_runtime_without_a_gpu(tmp_path: Path, monkeypatch) -> None:
    fake_colab(tmp_path, monkeypatch)
    notebook = with_parameters(ROOT / "train_colab.ipynb", {"colab_remote_project_wdir": str(ROOT)})
    with pytest.raises(CellExecutionError, match="this Colab runtime has no GPU: choose one with Runtime"):
        execute(notebook, tmp_path)
    assert "running on Colab" in stdout_of(notebook)


def test_train_colab_notebook_on_colab_unpacks_the_drive_archive_on_the_runtime_disk(tmp_path: Path,
                                                                                     monkeypatch) -> None:
    notebook_cells = nbformat.read(ROOT / "train_colab.ipynb", as_version=4).cells
    packages = next(cell.source for cell in notebook_cells if "def unmet_requirements" in cell.source)
    namespace: dict[str, Any] = {"Path": Path}
    exec(packages.split("unmet = ")[0], namespace)  # noqa: S102  (the notebook's own check, run here)
    if namespace["unmet_requirements"](str(ROOT / "prod_requirements.txt")):
        pytest.skip("prod_requirements.txt is not satisfied here: the notebook would install it, as on Colab")
    data = generated_prepared_data(tmp_path / "data")
    drive = tmp_path / "drive"
    drive.mkdir()
    with tarfile.open(drive / "stanford.tar.gz", "w:gz") as tar:
        for name in ("train", "test", "train_labels.csv", "test_labels.csv"):
            tar.add(data / name, arcname=name)
    bad = tmp_path / "bad.yml"
    bad.write_text("num_epochs: -1\n")  # train.py stops at once: this test is about what comes before
    runtime = tmp_path / "runtime" / "stanford"
    fake_colab(tmp_path, monkeypatch)
    notebook = with_parameters(ROOT / "train_colab.ipynb", {
        "colab_remote_project_wdir": str(ROOT), "ALLOW_CPU": True, "DRIVE_DATA_ARCHIVE": str(drive / "stanford.tar.gz"),
        "colab_data_dir": str(runtime), "CONFIG_PATH": str(bad), "RESUME": False,
        "EXTRA_ARGS": "--set 'description=two words'",
    })
    with pytest.raises(CellExecutionError, match="exited with code 2"):
        execute(notebook, tmp_path)
    printed = stdout_of(notebook)
    assert f"unpacked into {runtime}" in printed
    assert sorted(p.name for p in runtime.iterdir()) == ["test", "test_labels.csv", "train", "train_labels.csv"]
    assert sorted(p.name for p in (runtime / "train").iterdir()) == sorted(p.name for p in (data / "train").iterdir())
    assert f"--config {bad} -d {runtime} --set 'description=two words'" in printed  # a shell line, split


def test_train_colab_notebook_on_colab_prepares_the_kaggle_zip_on_the_runtime_disk(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    """Without a prepared archive on Drive, the Kaggle zip as downloaded is copied and prepared on the runtime."""
    from datasets.raw.synthetic import make_synthetic

    drive = make_synthetic(tmp_path / "drive", layout="torchvision", classes=3, train_per_class=2, test_per_class=1)
    (kaggle_zip,) = drive.glob("*.zip")
    bad = tmp_path / "bad.yml"
    bad.write_text("num_epochs: -1\n")  # train.py stops at once: this test is about the data
    runtime = tmp_path / "runtime" / "stanford"
    fake_colab(tmp_path, monkeypatch)
    notebook = with_parameters(ROOT / "train_colab.ipynb", {
        "colab_remote_project_wdir": str(ROOT), "ALLOW_CPU": True, "DRIVE_DATA_ARCHIVE": None,
        "KAGGLE_ZIP": str(kaggle_zip), "colab_data_dir": str(runtime), "CONFIG_PATH": str(bad), "RESUME": False,
    })
    with pytest.raises(CellExecutionError, match="exited with code 2"):
        execute(notebook, tmp_path)
    printed = stdout_of(notebook)
    assert f"copying {kaggle_zip}" in printed
    labels = {split: pd.read_csv(runtime / f"{split}_labels.csv") for split in ("train", "test")}
    assert (len(labels["train"]), len(labels["test"])) == (6, 3)
    assert sorted(p.name for p in (runtime / "train").iterdir()) == sorted(labels["train"]["image_fname"])
    assert not runtime.with_name("stanford.partial").exists()  # the zip's copy is gone once prepared
    assert f"--config {bad} -d {runtime}" in printed


def test_train_colab_notebook_rerun_resumes_a_run_cut_off_by_a_disconnect(tmp_path: Path) -> None:
    parameters, output = colab_parameters(tmp_path)
    execute(with_parameters(ROOT / "train_colab.ipynb", parameters), tmp_path, timeout=600)
    run_dirs = [path.parent for path in output.glob("*/metrics.csv")]
    assert len(run_dirs) == 1
    # A 2-epoch run killed by a disconnect after its first epoch: last.ckpt of epoch 1, no summary.json (the
    # disconnect gave train.py no chance to write it). Rerunning the notebook continues that run.
    (run_dirs[0] / "summary.json").unlink()
    parameters["EXTRA_ARGS"] = [*parameters["EXTRA_ARGS"], "num_epochs=2"]
    printed = stdout_of(execute(with_parameters(ROOT / "train_colab.ipynb", parameters), tmp_path, timeout=600))
    assert "--resume auto" in printed and f"resuming run {run_dirs[0].name}" in printed, printed[-3000:]
    assert [path.parent for path in output.glob("*/metrics.csv")] == run_dirs
    assert pd.read_csv(run_dirs[0] / "metrics.csv")["epoch"].tolist() == [0, 1]
    assert json.loads((run_dirs[0] / "summary.json").read_text())["status"] == "finished"


def test_train_colab_notebook_fails_the_cell_with_train_py_exit_code(tmp_path: Path) -> None:
    config = tmp_path / "bad.yml"
    config.write_text("num_epochs: -1\n")
    notebook = with_parameters(ROOT / "train_colab.ipynb", {
        "local_project_wdir": str(ROOT), "DATA_ON_COLAB": False, "CONFIG_PATH": str(config), "RESUME": False,
    })
    with pytest.raises(CellExecutionError, match="exited with code 2"):
        execute(notebook, tmp_path)
    printed = stdout_of(notebook)
    assert "config error" in printed and "num_epochs" in printed  # train.py's own message reached the notebook
