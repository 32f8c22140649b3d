"""Prepare Stanford Cars for training: raw downloads (either release, or a Kaggle mirror's zip) -> train/, test/ and
the label CSVs.

Also writes a small synthetic raw download (--make-synthetic DIR) for tests and demos without the real data.
See documentation/dataset.md.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from datasets.raw.prepare import prepare_dataset
from datasets.raw.synthetic import LAYOUTS, MAX_SIZE, MIN_SIZE, make_synthetic
from utils.cli import run_main
from utils.configuration import is_placeholder, load_config
from utils.errors import ConfigError
from utils.logging_setup import setup_logging

log = logging.getLogger("cars")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--config", default=None,
                        help="config file (default: config.yml, else config_template.yml)")
    parser.add_argument("--raw-data-path", default=None,
                        help="folder of the raw downloads, or a Kaggle mirror's .zip (default: "
                             "stanford_raw_data_path of the config)")
    parser.add_argument("--data-path", default=None,
                        help="folder to prepare (default: stanford_data_path of the config)")
    parser.add_argument("--force", action="store_true",
                        help="prepare again even when the data folder is complete, replacing a preparation of other "
                             "data (with --make-synthetic: overwrite raw files in DIR)")
    parser.add_argument("--full-check", action="store_true",
                        help="decode every image instead of checking its header and JPEG segments (slower; also "
                             "finds damage inside intact segments, which the image cache otherwise reports when "
                             "training starts)")
    synthetic = parser.add_argument_group("synthetic data")
    synthetic.add_argument("--make-synthetic", metavar="DIR", default=None,
                           help="write a synthetic raw download into DIR instead of preparing data")
    synthetic.add_argument("--layout", choices=LAYOUTS, default="updated",
                           help="release, or Kaggle mirror's zip, to imitate (default: updated)")
    synthetic.add_argument("--classes", type=int, default=10, help="number of classes (default: 10)")
    synthetic.add_argument("--train-per-class", type=int, default=6, help="train images per class (default: 6)")
    synthetic.add_argument("--test-per-class", type=int, default=4, help="test images per class (default: 4)")
    synthetic.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    synthetic.add_argument("--min-size", type=int, default=MIN_SIZE,
                           help=f"smallest image side in px (default: {MIN_SIZE})")
    synthetic.add_argument("--max-size", type=int, default=MAX_SIZE,
                           help=f"largest image side in px (default: {MAX_SIZE}; above 255, boxes reach numbers "
                                "stored as uint16, as in the real files)")
    return parser.parse_args(argv)


def _make_synthetic(args: argparse.Namespace) -> None:
    if not 1 <= args.classes <= 196:
        raise ConfigError(f"--classes is {args.classes}; expected 1..196")
    if args.train_per_class < 1 or args.test_per_class < 1:
        raise ConfigError("--train-per-class and --test-per-class must be at least 1")
    if not 0 <= args.seed < 2**32:
        raise ConfigError(f"--seed is {args.seed}; expected 0..{2**32 - 1}")
    if not 16 <= args.min_size <= args.max_size:
        raise ConfigError(f"--min-size {args.min_size} and --max-size {args.max_size}: expected 16 <= min <= max")
    if not args.make_synthetic.strip():
        raise ConfigError("--make-synthetic needs a folder")
    unused = [flag for flag, value in (("--raw-data-path", args.raw_data_path), ("--data-path", args.data_path),
                                       ("--full-check", args.full_check)) if value not in (None, False)]
    if unused:
        raise ConfigError(f"--make-synthetic only writes raw data; {', '.join(unused)} belong to a preparation run "
                          "(run it afterwards with --raw-data-path DIR)")
    out = make_synthetic(Path(args.make_synthetic).expanduser(), layout=args.layout, classes=args.classes,
                         train_per_class=args.train_per_class, test_per_class=args.test_per_class, seed=args.seed,
                         min_size=args.min_size, max_size=args.max_size, overwrite=args.force)
    log.info("wrote a synthetic %s download of %d classes to %s", args.layout, args.classes, out)


def _path(flag_value: str | None, config: dict, key: str, flag: str, meaning: str) -> Path:
    value = flag_value if flag_value is not None else config[key]
    if is_placeholder(value) or not str(value).strip():
        raise ConfigError(f"{key} is not set (it is {value!r}): set it in config.yml to {meaning}, "
                          f"or pass {flag} DIR")
    return Path(value).expanduser()


def main(argv: list[str] | None = None) -> int:
    setup_logging("INFO")
    args = parse_args(argv)
    if args.make_synthetic is not None:
        _make_synthetic(args)
        return 0
    config = load_config(args.config)
    raw_dir = _path(args.raw_data_path, config, "stanford_raw_data_path", "--raw-data-path",
                    "the folder holding the raw Stanford Cars downloads")
    data_dir = _path(args.data_path, config, "stanford_data_path", "--data-path", "the folder for the prepared data")
    prepare_dataset(raw_dir, data_dir, force=args.force, full_check=args.full_check)
    return 0


if __name__ == "__main__":
    run_main(main)
