"""Configs: read the user's settings and a recipe, apply `--set KEY=VALUE` overrides, check every value.

A config is made of layers, each replacing the keys it names (a whole key: a recipe's `image_augmentations`
replaces the local one, it is not merged into it): the schema's defaults < the user's local settings `config.yml`
< the recipe given with `--config` (e.g. `configs/thesis/C-50.yml`) < `--set` overrides. Without `--config`,
`config.yml` is read, else `config_template.yml`. The keys, their types, defaults and meanings live in one place,
`utils/config_schema.py`.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from utils.config_schema import KEYS, PATH, SCHEMA, SECTIONS, defaults
from utils.errors import ConfigError

log = logging.getLogger("cars")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = "config.yml"
LOCAL_CONFIG_ENV = "CARS_LOCAL_CONFIG"
TEMPLATE_CONFIG = "config_template.yml"
SECRET_MASK = "***"
SET_SOURCE = "--set"


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def unknown_name_message(kind: str, name: str, valid: list[str], where: str = "") -> str:
    """'<kind> 'X' is not <where> (did you mean ...?); valid: ...' — shared by every name lookup."""
    where = where or "known"
    return f"{kind} {name!r} is not {where}{_suggest(name, valid)}; valid names: {', '.join(sorted(valid))}"


def validate(config: dict[str, Any], source: str = "config", sources: dict[str, str] | None = None
             ) -> dict[str, Any]:
    """Check every key against the schema; return a complete config (missing keys take defaults).
    `sources` names the file (or --set) that gave each key, for the error messages; else `source` is named."""
    sources = sources or {}
    for name in config:
        if name not in KEYS:
            raise ConfigError(f"unknown key {name!r} in {sources.get(name, source)}{_suggest(name, list(KEYS))}")
    resolved = defaults()
    resolved.update(config)
    for key in SCHEMA:
        value = resolved[key.name]
        if not key.accepts(value):
            raise ConfigError(f"{key.name} in {sources.get(key.name, source)} is {value!r}; expected "
                              f"{key.expected()}")
        if key.kind is PATH and value is not None and not is_placeholder(value):
            resolved[key.name] = os.path.expanduser(value)
    for name in ("normalization_params_rgb", "normalization_params_grayscale"):
        params = resolved[name]
        channels = 1 if name.endswith("grayscale") else 3
        if len(params["mean"]) != channels or len(params["std"]) != channels:
            raise ConfigError(
                f"{name} in {sources.get(name, source)} needs {channels} mean and {channels} std values, "
                f"got {len(params['mean'])} and {len(params['std'])}"
            )
    return resolved


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split 'a.b=VALUE' into (['a', 'b'], value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r} is not KEY=VALUE")
    dotted, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {dotted}: value {raw!r} is not valid YAML ({error.problem})") from None
    return dotted.strip().split("."), value


def literal(text: str) -> str:
    """`text` as a YAML scalar that reads back as exactly that string (for `KEY=VALUE` overrides of paths, which
    YAML would otherwise turn into numbers, comments after ' #', mappings after ': ' ...)."""
    return json.dumps(text)  # a JSON string is a double-quoted YAML scalar


def apply_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `KEY=VALUE` / `a.b.c=VALUE` overrides to a copy of `config`."""
    config = copy.deepcopy(config)
    for text in overrides:
        path, value = parse_override(text)
        top = path[0]
        if top not in KEYS:
            raise ConfigError(f"unknown key {top!r} in --set{_suggest(top, list(KEYS))}")
        if len(path) == 1:
            config[top] = value
            continue
        node = config.setdefault(top, copy.deepcopy(KEYS[top].default))
        if node is None:
            node = config[top] = {}
        for part in path[1:-1]:
            if not isinstance(node, dict):
                raise ConfigError(f"--set {'.'.join(path)}: {top} does not hold nested values")
            node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {'.'.join(path)}: {top} does not hold nested values")
        node[path[-1]] = value
    return config


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping with `yaml.safe_load`; errors name the file and the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read config file {str(path)!r}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not UTF-8 text (byte {error.start}: {error.reason}); save it as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "syntax error"
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values, not {type(data).__name__}")
    return data


def local_config_path() -> Path | None:
    """The user's local settings: `config.yml` in the current folder, else in the project folder; None if neither.

    The environment variable CARS_LOCAL_CONFIG names another file instead, or, set empty, none at all (the test
    suite sets it so, so that a user's own config.yml never changes what the tests run)."""
    chosen = os.environ.get(LOCAL_CONFIG_ENV)
    if chosen is not None:
        if not chosen:
            return None
        if not Path(chosen).expanduser().is_file():
            raise ConfigError(f"{LOCAL_CONFIG_ENV}={chosen!r} names no file (unset it to read config.yml)")
        return Path(chosen).expanduser()
    for folder in (Path.cwd(), PROJECT_ROOT):
        if (folder / DEFAULT_CONFIG).is_file():
            return folder / DEFAULT_CONFIG
    return None


def resolve_config_path(path: str | None) -> Path:
    """The config file to read: `path`, else `config.yml`, else `config_template.yml` (said in the log)."""
    if path is not None:
        candidate = Path(path)
        if not candidate.is_file():
            raise ConfigError(f"config file {path!r} does not exist")
        return candidate
    local = local_config_path()
    if local is not None:
        return local
    for folder in (Path.cwd(), PROJECT_ROOT):
        if (folder / TEMPLATE_CONFIG).is_file():
            log.warning("%s not found: reading %s (copy it to %s to make your own settings)",
                        DEFAULT_CONFIG, folder / TEMPLATE_CONFIG, DEFAULT_CONFIG)
            return folder / TEMPLATE_CONFIG
    raise ConfigError(f"neither {DEFAULT_CONFIG} nor {TEMPLATE_CONFIG} found")


def _shown(path: Path) -> str:
    """A path as the user would type it: relative to the current folder when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@dataclass
class ResolvedConfig:
    """A validated config and where its values came from.

    `layers`: the files read, in the order applied (later ones win), plus '--set' when overrides were given;
    `sources`: for each key a layer named, the last layer that named it."""

    config: dict[str, Any]
    layers: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    local: str | None = None
    recipe: str | None = None


def config_files(path: str | None = None, local: bool = True) -> list[Path]:
    """The files a config is read from, in order: without `path`, config.yml (else the template); with `path`, the
    user's config.yml (unless `local` is False, or it is that same file) and then `path`."""
    if path is None:
        return [resolve_config_path(None)] if local else []
    recipe_path = resolve_config_path(path)
    local_path = local_config_path() if local else None
    if local_path is not None and local_path.resolve() != recipe_path.resolve():
        return [local_path, recipe_path]
    return [recipe_path]


def resolve_config(path: str | None = None, overrides: list[str] | None = None, local: bool = True
                   ) -> ResolvedConfig:
    """Read the layers (schema defaults < config.yml < `path` < `overrides`), merge and validate them."""
    files = config_files(path, local)
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for file in files:
        values = read_yaml(file)
        merged.update(values)
        sources.update(dict.fromkeys(values, _shown(file)))
    if overrides:
        merged = apply_overrides(merged, overrides)
        sources.update(dict.fromkeys((parse_override(text)[0][0] for text in overrides), SET_SOURCE))
    resolved = ResolvedConfig(validate(merged, sources=sources), [_shown(f) for f in files], sources)
    if overrides:
        resolved.layers.append(SET_SOURCE)
    if path is not None:
        resolved.recipe = _shown(files[-1])
        if len(files) == 2:
            resolved.local = _shown(files[0])
    return resolved


def load_config(path: str | None = None, overrides: list[str] | None = None, local: bool = True) -> dict[str, Any]:
    """Read, override and validate a config: the schema's defaults < the user's config.yml < the file `path` <
    `overrides`. `path=None` means config.yml alone (else the template); `local=False` leaves config.yml out."""
    return resolve_config(path, overrides, local).config


def is_placeholder(value: Any) -> bool:
    """True for template placeholders such as '<path to the folder ...>'."""
    return isinstance(value, str) and value.strip().startswith("<") and value.strip().endswith(">")


def masked(config: dict[str, Any]) -> dict[str, Any]:
    """A copy with secret values replaced by '***' (for files, trackers and the console)."""
    out = copy.deepcopy(config)
    for key in SCHEMA:
        if key.secret and key.name in out and not is_placeholder(out[key.name]):
            out[key.name] = SECRET_MASK
    return out


def dump_yaml(config: dict[str, Any]) -> str:
    """The config as YAML in schema order, secrets masked."""
    ordered = {key.name: masked(config)[key.name] for key in SCHEMA if key.name in config}
    return yaml.safe_dump(ordered, sort_keys=False, default_flow_style=None, allow_unicode=True)


def dump_with_sources(resolved: ResolvedConfig) -> str:
    """The config as YAML (as `dump_yaml`), each key that differs from its default followed by a comment naming
    the layer that gave it; a first comment line lists the layers. Still valid YAML, e.g. to save as a config."""
    lines = [f"# layers, later ones win: schema defaults < {' < '.join(resolved.layers)}"
             if resolved.layers else "# layers: schema defaults only"]
    ordered = {key.name: masked(resolved.config)[key.name] for key in SCHEMA if key.name in resolved.config}
    text = yaml.safe_dump(ordered, sort_keys=False, default_flow_style=None, allow_unicode=True, width=10**6)
    blocks: list[list[str]] = []  # one per key: its line and the indented lines of a nested value
    for line in text.splitlines():
        if line[:1].isspace() or line.startswith("- ") or not blocks:
            blocks[-1:] = [[*(blocks[-1] if blocks else []), line]]
        else:
            blocks.append([line])
    for name, block in zip(ordered, blocks):
        source = resolved.sources.get(name)
        if source is None or resolved.config[name] == KEYS[name].default:
            lines += block
        elif len(block) > 1:  # a comment after the first line of a nested value could cut a multi-line scalar
            lines += [f"# from {source}:", *block]
        else:
            lines.append(f"{block[0]}  # from {source}")
    return "\n".join(lines) + "\n"


def reference_markdown() -> str:
    """The configuration reference (documentation/configuration.md), generated from the schema."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from the schema in `utils/config_schema.py` by `python -m utils.configuration --markdown`;",
        "a test fails when this file and the schema disagree. Defaults are the values of the thesis's best run",
        "(C-50); `config_template.yml` holds the same values with comments. Override any key on the command line",
        "with `python train.py --set KEY=VALUE` (dotted keys reach nested values: `--set optimizer_params.lr=0.01`).",
        "",
        "A config is made of layers, later ones winning, each replacing the keys it names whole: the defaults below <",
        "your local settings `config.yml` < the recipe given with `--config` (e.g. `configs/thesis/C-50.yml`, which",
        "names recipe keys only) < `-d` and `--set`. So `config.yml` holds what is yours (data and output paths,",
        "trackers and their credentials, hardware) once, and every recipe runs with it. Without `--config`,",
        "`config.yml` is read alone (else `config_template.yml`); `--no-local-config` leaves `config.yml` out.",
        "`config.yml` is looked for in the current folder, then in the project folder; the environment variable",
        "`CARS_LOCAL_CONFIG` names another file instead, or, set empty, none (the test suite runs so).",
        "`python train.py --config configs/thesis/C-50.yml --print-config` prints the result, each key that differs",
        "from its default followed by the file (or `--set`) it came from. A run warns when `config.yml` sets a",
        "recipe key (one that changes what is computed) that the recipe leaves to it.",
        "",
    ]
    for section in SECTIONS:
        lines += [f"## {section.replace('_', ' ').capitalize()}", "", "| key | type | default | meaning |",
                  "| --- | --- | --- | --- |"]
        for key in SCHEMA:
            if key.section == section:
                default = yaml.safe_dump(key.default, default_flow_style=True, width=10**6).strip()
                default = default.removesuffix("\n...").removesuffix("...").strip()
                lines.append(f"| `{key.name}` | {key.expected()} | `{default}` | {key.help} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print the configuration reference as markdown")
    args = parser.parse_args(argv)
    if args.markdown:
        print(reference_markdown())
    return 0


if __name__ == "__main__":
    from utils.cli import run_main

    run_main(main)
