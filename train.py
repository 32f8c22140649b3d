"""Train a network on the prepared Stanford Cars data, as one YAML config describes.

    python train.py [--config PATH] [--no-local-config] [-d DATA_PATH] [--set KEY=VALUE ...] [--print-config]
                    [--demo] [--resume PATH|auto]

The config is made of layers, later ones winning: the schema's defaults < config.yml (the user's local settings)
< the recipe given with --config < -d and --set.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from utils.cli import run_main
from utils.configuration import (
    PROJECT_ROOT,
    TEMPLATE_CONFIG,
    ResolvedConfig,
    dump_with_sources,
    literal,
    resolve_config,
)
from utils.logging_setup import setup_logging

log = logging.getLogger("cars")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a car-model classifier from one YAML config.")
    parser.add_argument("--config", default=None,
                        help="a recipe (e.g. configs/thesis/C-50.yml) applied on top of your config.yml (default: "
                             "config.yml alone, else config_template.yml)")
    parser.add_argument("--no-local-config", dest="local_config", action="store_false",
                        help="leave config.yml out: the --config file on the schema's defaults alone")
    parser.add_argument("-d", "--data-path", default=None,
                        help="prepared data folder; overrides stanford_data_path (default: from the config)")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config keys; values are YAML, dotted keys reach nested values "
                             "(e.g. --set num_epochs=5 optimizer_params.lr=0.01); repeatable")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config, each key that differs from its default with the file (or "
                             "--set) it came from, and exit")
    parser.add_argument("--demo", action="store_true",
                        help="generate a small synthetic dataset under demo/, prepare it and train on it (CPU)")
    parser.add_argument("--resume", default=None, metavar="PATH|auto",
                        help="continue a run from its last.ckpt; 'auto' finds the run named by run_name, or the "
                             "newest run with the same config (default: start a new run)")
    return parser.parse_args(argv)


def _report_layers(resolved: ResolvedConfig) -> None:
    """Say which files made the config; warn when config.yml sets recipe keys that the recipe leaves to it."""
    log.info("config: schema defaults < %s", " < ".join(resolved.layers) if resolved.layers else "nothing else")
    if resolved.local is None:
        return
    from utils.config_schema import KEYS
    from utils.resilience import NON_RECIPE_KEYS

    inherited = [name for name, source in resolved.sources.items() if source == resolved.local
                 and name not in NON_RECIPE_KEYS and resolved.config[name] != KEYS[name].default]
    if inherited:
        log.warning("%s sets %s, which %s leaves to it: the run uses %s's value(s) (--print-config shows every "
                    "key's source; --no-local-config runs the recipe without %s)", resolved.local,
                    ", ".join(inherited), resolved.recipe, resolved.local, resolved.local)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # with --print-config, stdout holds the YAML alone (e.g. redirected into a config file); messages go to stderr
    console = sys.stderr if args.print_config else sys.stdout
    setup_logging("INFO", lightning=not args.print_config, stream=console)  # Lightning takes seconds to import
    overrides = list(args.overrides)
    config_path, local = args.config, args.local_config
    if args.demo:
        from datasets.raw.demo import prepare_demo

        overrides = prepare_demo(Path("demo")) + overrides
        # the demo shows the template's recipe, whatever a config.yml of the user's holds
        config_path = config_path or str(PROJECT_ROOT / TEMPLATE_CONFIG)
        local = local and args.config is not None
    if args.data_path is not None:
        overrides.append(f"stanford_data_path={literal(args.data_path)}")
    resolved = resolve_config(config_path, overrides, local)
    if args.print_config:
        print(dump_with_sources(resolved), end="")
        return 0
    config = resolved.config
    setup_logging(config["loglevel"], config["logging_dir"], lightning=True, stream=console)
    _report_layers(resolved)
    from models.training_run import train

    run_dir = train(config, resume=args.resume)
    if args.demo:
        log.info("demo data: demo/raw (generated raw downloads) -> demo/stanford (prepared); "
                 "dashboard: python -m utils.dashboard demo/output --tracking-uri sqlite:///demo/mlruns.db")
    log.info("run folder: %s", run_dir)
    return 0


if __name__ == "__main__":
    run_main(main)
