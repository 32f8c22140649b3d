"""predict.py end to end: top-k per image from a checkpoint alone, JSON output, unreadable images, bad checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.helpers import run_script


@pytest.fixture
def run_dir(trained_run: Path) -> Path:
    """A one-epoch run of the real training code on generated data (3 classes, 2 test images each), once a session."""
    return trained_run


@pytest.fixture
def images(run_dir: Path, tmp_path: Path) -> Path:
    """The run's test images plus one file that is not an image and one file that is not an image type."""
    from utils.configuration import read_yaml

    folder = tmp_path / "photos"
    shutil.copytree(Path(read_yaml(run_dir / "config.yml")["stanford_data_path"]) / "test", folder)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    return folder


def test_json_top1_agrees_with_evaluate_and_unreadable_image_is_named(run_dir: Path, images: Path) -> None:
    from models.evaluate import default_data_path, evaluate
    from models.inference import load_module

    checkpoint = run_dir / "checkpoints" / "best.ckpt"
    result = run_script("predict.py", ["--checkpoint", str(checkpoint), str(images), "--json", "--top-k", "2",
                                       "--batch-size", "4"], cwd=images.parent)
    assert result.returncode == 1  # one image failed, the others were predicted
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and "broken.jpg" in errors[0] and "notes.txt" not in result.stdout
    document = json.loads(result.stdout)
    assert [Path(e["image"]).name for e in document["errors"]] == ["broken.jpg"]
    by_name = {Path(item["image"]).name: item["predictions"] for item in document["images"]}
    assert sorted(by_name) == sorted(p.name for p in images.glob("0*.jpg"))

    evaluation = evaluate(load_module(checkpoint), default_data_path(checkpoint))
    names = evaluation.per_class["class_name"].tolist()
    for row in evaluation.predictions.itertuples():
        top = by_name[row.image_fname]
        assert len(top) == 2 and top[0]["probability"] >= top[1]["probability"]
        assert top[0]["class_id"] == row.predicted_class_id
        assert top[0]["class_name"] == names[row.predicted_class_id - 1]
        assert top[0]["probability"] == pytest.approx(row.probability, abs=1e-5)


def test_text_output_lists_top_k_per_image(run_dir: Path, images: Path) -> None:
    one = sorted(images.glob("0*.jpg"))[0]
    result = run_script("predict.py", ["--checkpoint", str(run_dir / "checkpoints" / "last.ckpt"), str(one),
                                       "--top-k", "5"], cwd=images.parent)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    # Three classes: top-5 shows all three, probabilities in decreasing order summing to one.
    assert lines[0] == str(one) and len(lines) == 4
    probabilities = [float(line.split("%")[0]) for line in lines[1:]]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) == pytest.approx(100, abs=0.02)
    assert all("(class " in line for line in lines[1:])


@pytest.mark.parametrize("make, message", [
    (lambda folder: folder / "missing.ckpt", "missing.ckpt does not exist"),
    pytest.param(lambda folder: _write(folder / "notes.ckpt", b"plain text"),
                 "notes.ckpt is not a checkpoint written by train.py"),
])
def test_missing_or_foreign_checkpoint_is_one_line_and_exit_2(tmp_path: Path, make, message: str) -> None:
    image = tmp_path / "car.jpg"
    image.write_bytes(b"")
    result = run_script("predict.py", ["--checkpoint", str(make(tmp_path)), str(image)], cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr
    assert "Traceback" not in result.stderr


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def test_a_photo_stored_sideways_with_an_exif_orientation_is_read_upright(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from datasets.prepared.transforms import PrefixSettings
    from models.inference import load_image

    upright = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 64, 3), dtype=np.uint8))
    upright.save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display", as phones tag portrait photos
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "sideways.png", exif=exif)
    prefix = PrefixSettings(image_size=(32, 48), grayscale=False, crop_to_bbox=False, erase_background=False)
    assert load_image(tmp_path / "sideways.png", prefix).equal(load_image(tmp_path / "upright.png", prefix))


def test_device_auto_takes_a_gpu_when_present_and_a_missing_gpu_is_one_line(monkeypatch) -> None:
    import torch

    from models.inference import resolve_device
    from utils.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(UserError, match="--device cuda:1: there are 1 CUDA GPU"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu")
    with pytest.raises(UserError, match="--device cuda: no CUDA GPU is visible"):
        resolve_device("cuda")


@pytest.mark.slow  # subprocesses of the real command: the default run keeps a faster test of its path
def test_predict_runs_on_the_device_asked_for(run_dir: Path, images: Path) -> None:
    import torch

    checkpoint = str(run_dir / "checkpoints" / "best.ckpt")
    on_cpu = run_script("predict.py", ["--checkpoint", checkpoint, str(images), "--json", "--device", "cpu"],
                        cwd=images.parent)
    assert on_cpu.returncode == 1 and json.loads(on_cpu.stdout)["images"]  # broken.jpg is named, the rest predicted
    wrong = run_script("predict.py", ["--checkpoint", checkpoint, str(images), "--device", "gpu"], cwd=images.parent)
    assert wrong.returncode == 2 and "'gpu' is not auto, cpu, cuda or cuda:N" in wrong.stderr
    on_cuda = run_script("predict.py", ["--checkpoint", checkpoint, str(images), "--json", "--device", "cuda"],
                         cwd=images.parent)
    if not torch.cuda.is_available():
        assert on_cuda.returncode == 2 and on_cuda.stderr.strip().splitlines() == [
            "error: --device cuda: no CUDA GPU is visible to torch here; use --device auto or cpu"]
        return
    # on a GPU: the same classes, probabilities within float32 rounding of the CPU's
    cpu_images, cuda_images = json.loads(on_cpu.stdout)["images"], json.loads(on_cuda.stdout)["images"]
    assert [i["image"] for i in cuda_images] == [i["image"] for i in cpu_images]
    for mine, theirs in zip(cuda_images, cpu_images):
        assert mine["predictions"][0]["class_id"] == theirs["predictions"][0]["class_id"]
        assert mine["predictions"][0]["probability"] == pytest.approx(theirs["predictions"][0]["probability"],
                                                                       abs=1e-4)
