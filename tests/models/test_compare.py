"""models.compare: GhostNet's cost matches its paper, and the table has one row per architecture."""

import pytest

from models.arch_dict import get_architectures_dictionary
from models.compare import main, measure
from utils.errors import ConfigError


def test_ghostnet_at_224_px_and_1000_classes_costs_what_the_paper_says():
    cost = measure("ghost", (224, 224), num_classes=1000, runs=1)
    assert cost.macs == pytest.approx(141e6, rel=0.03)  # GhostNet paper, Table 7: 141 M FLOPs (multiply-adds)
    assert cost.params == pytest.approx(5.18e6, rel=0.005)
    assert cost.weights_mb == pytest.approx(cost.params * 4 / 1e6)
    assert cost.latency_ms > 0


def test_mobilenet_v2_macs_match_its_paper():
    assert measure("mob_v2", (224, 224), runs=1).macs == pytest.approx(300e6, rel=0.03)  # MobileNetV2 paper: 300 M


def test_mobilenet_v3_macs_match_its_paper():
    # Searching for MobileNetV3, Tables 3 and 4: 56 M (small 1.0) and 219 M (large 1.0) multiply-adds
    assert measure("mob_v3_small", (224, 224), runs=1).macs == pytest.approx(56e6, rel=0.03)
    assert measure("mob_v3_large", (224, 224), runs=1).macs == pytest.approx(219e6, rel=0.03)


@pytest.mark.slow  # subprocesses of the real command: the default run keeps a faster test of its path
def test_table_file_has_a_header_and_one_row_per_requested_architecture(tmp_path, capsys):
    output = tmp_path / "table.md"
    main(
        [
            "--image-size",
            "64",
            "64",
            "--num-classes",
            "10",
            "--runs",
            "1",
            "--architectures",
            "mob_v3_small",
            "sq_11",
            "--output",
            str(output),
        ]
    )
    text = output.read_text()
    assert "Input 64x64 RGB, 10 classes" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| architecture")]
    assert [row.split("|")[1].strip() for row in rows] == ["mob_v3_small", "sq_11"]
    cells = [[cell.strip() for cell in row.split("|")[1:-1]] for row in rows]
    # the int8 file holds about a quarter of the float32 weights; ONNX Runtime's latencies are measured
    assert all(0.15 < float(row[5]) / float(row[3]) < 0.45 and float(row[6]) > 0 and float(row[7]) > 0
               for row in cells)
    assert text.strip() in capsys.readouterr().out


def test_image_smaller_than_an_architecture_accepts_is_a_config_error():
    with pytest.raises(ConfigError, match="too small for hard_68"):
        main(["--image-size", "16", "16", "--architectures", "ghost", "hard_68"])


def test_unknown_architecture_is_a_config_error():
    with pytest.raises(ConfigError, match="architecture 'gost'"):
        main(["--architectures", "gost"])


@pytest.mark.slow  # subprocesses of the real command: the default run keeps a faster test of its path
def test_default_table_covers_every_registered_architecture(capsys):
    main(["--image-size", "32", "32", "--runs", "1", "--no-onnx"])
    rows = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows[1:] == list(get_architectures_dictionary())


@pytest.mark.parametrize("args", [["--runs", "0"], ["--num-classes", "-3"], ["--num-classes", "x"]])
def test_counts_that_are_not_positive_are_refused_by_the_parser(args: list[str], capsys) -> None:
    from models.compare import parse_args

    with pytest.raises(SystemExit) as exited:
        parse_args(args)
    assert exited.value.code == 2
    assert "is not a positive integer" in capsys.readouterr().err
