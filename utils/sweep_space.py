"""A sweep's search space: the SPACE.yml file of `python -m utils.sweep`, read and checked like a config.

The file names config keys (dotted for nested values: `optimizer_params.lr`) with an Optuna distribution each, the
objective, and the Optuna sampler and pruner with their arguments:

    objective: {metric: valid_acc, direction: maximize}
    sampler: {name: TPESampler, params: {seed: 0}}
    pruner: {name: MedianPruner, params: {n_warmup_steps: 2}}
    params:
      optimizer_params.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      output_channels: {type: int, low: 256, high: 1280, step: 64}
      lr_scheduler_params.milestones: {type: categorical, choices: [[67, 82, 95, 107], [40, 70]]}
      scheduler:                      # `settings`: each choice sets several keys at once, under a label
        type: settings
        choices:
          C-50: {lr_scheduler: MultiStepLR, lr_scheduler_params: {gamma: 0.1, milestones: [67, 82, 95, 107]}}
          C-65: {lr_scheduler: LambdaLR, lr_scheduler_params: {lr_lambda: 'lambda epoch: 0.975 ** epoch'}}

Every bound and every choice is put into the base config and checked (schema, loss, optimizer, scheduler,
augmentations) before any trial runs, so a bad space is one line naming the entry.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from utils.config_schema import KEYS, PARAMS, TRANSFORMS
from utils.configuration import _suggest, read_yaml, unknown_name_message, validate
from utils.errors import ConfigError


class SpaceError(ConfigError):
    """An invalid search-space file."""

    prefix = "space error"


# objective metric -> (the summary.json value a trial returns, its direction, the per-epoch value the pruner sees)
OBJECTIVES = {
    "valid_acc": ("max_valid_acc", "maximize", "valid_acc"),
    "valid_loss": ("min_valid_loss", "minimize", "valid_loss"),
    "test_acc": ("test_acc", "maximize", "valid_acc"),
}
TOP_KEYS = ("objective", "sampler", "pruner", "params")
TYPES = ("float", "int", "categorical", "settings")
PRIMITIVES = (type(None), bool, int, float, str)


def set_dotted(config: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in `config` in place (a null or missing level becomes a mapping), as `--set a.b.c=...` does."""
    path = dotted.split(".")
    if path[0] not in KEYS:
        raise KeyError(dotted)
    node = config
    for part in path[:-1]:
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise TypeError(f"{part} does not hold nested values")
    node[path[-1]] = copy.deepcopy(value)


def apply_settings(base: dict[str, Any], settings: dict[str, Any], source: str) -> dict[str, Any]:
    """The base config with the dotted `settings` put in, validated against the schema."""
    config = copy.deepcopy(base)
    for dotted, value in settings.items():
        set_dotted(config, dotted, value)
    return validate(config, source)


@dataclass
class Param:
    """One entry of `params`: a config key (or, for `settings`, a label) and its distribution."""

    name: str
    distribution: optuna.distributions.BaseDistribution
    # categorical choices that Optuna cannot store (lists, mappings) are drawn by label: label -> value
    values: dict[str, Any] | None = None
    settings: bool = False

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Draw this parameter for `trial`; returns the dotted config keys it sets."""
        dist = self.distribution
        if isinstance(dist, optuna.distributions.FloatDistribution):
            value = trial.suggest_float(self.name, dist.low, dist.high, step=dist.step, log=dist.log)
        elif isinstance(dist, optuna.distributions.IntDistribution):
            value = trial.suggest_int(self.name, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            value = trial.suggest_categorical(self.name, dist.choices)
            value = self.values[value] if self.values is not None else value
        return dict(value) if self.settings else {self.name: value}

    def extremes(self) -> list[Any]:
        """The values to check before any trial: both bounds, or every choice."""
        dist = self.distribution
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            return list(self.values.values()) if self.values is not None else list(dist.choices)
        return [dist.low, dist.high]


@dataclass
class Space:
    """A checked search space."""

    path: Path
    metric: str
    direction: str
    sampler_name: str
    sampler_params: dict[str, Any]
    pruner: optuna.pruners.BasePruner
    params: list[Param] = field(default_factory=list)

    @property
    def summary_key(self) -> str:
        return OBJECTIVES[self.metric][0]

    @property
    def epoch_metric(self) -> str:
        return OBJECTIVES[self.metric][2]

    def sampler(self, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
        """The sampler; a seed is moved on by `seed_offset` (the trials the study already holds), so that a worker
        joining a study does not draw the values of the study's first trials again."""
        params = dict(self.sampler_params)
        if params.get("seed") is not None:
            params["seed"] = int(params["seed"]) + seed_offset
        return getattr(optuna.samplers, self.sampler_name)(**params)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Every parameter drawn for `trial`, as dotted config keys and values."""
        settings: dict[str, Any] = {}
        for param in self.params:
            settings.update(param.suggest(trial))
        return settings


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpaceError(f"{where} must be a mapping, not {type(value).__name__}")
    return value


def _objective(raw: Any, source: str, base: dict[str, Any]) -> tuple[str, str]:
    raw = {"metric": raw} if isinstance(raw, str) else _mapping(raw, f"{source}: objective")
    unknown = set(raw) - {"metric", "direction"}
    if unknown:
        raise SpaceError(f"{source}: objective takes metric and direction, not {sorted(unknown)[0]!r}")
    metric = raw.get("metric", "valid_acc")
    if metric not in OBJECTIVES:
        raise SpaceError(f"{source}: " + unknown_name_message("objective metric", str(metric), list(OBJECTIVES)))
    direction = raw.get("direction", OBJECTIVES[metric][1])
    if direction != OBJECTIVES[metric][1]:
        raise SpaceError(f"{source}: objective {metric} is to {OBJECTIVES[metric][1]}, not {direction!r}")
    if metric == "test_acc" and base.get("validation_split", "test") == "test":
        raise SpaceError(f"{source}: objective test_acc needs a validation split held out from train "
                         "(validation_split: a fraction); with validation on the test split, use valid_acc")
    return metric, direction


def _optuna_class(raw: Any, source: str, what: str, module: Any, base_class: type) -> tuple[str, dict] | None:
    if raw is None:
        return None
    raw = {"name": raw} if isinstance(raw, str) else _mapping(raw, f"{source}: {what}")
    unknown = set(raw) - {"name", "params"}
    if unknown or "name" not in raw:
        raise SpaceError(f"{source}: {what} needs name (and params), e.g. {{name: ..., params: {{...}}}}")
    names = [n for n in dir(module) if isinstance(getattr(module, n), type)
             and issubclass(getattr(module, n), base_class) and getattr(module, n) is not base_class]
    name = raw["name"]
    if name not in names:
        raise SpaceError(f"{source}: " + unknown_name_message(what, str(name), names, f"in optuna.{what}s"))
    params = _mapping(raw.get("params"), f"{source}: {what}.params")
    try:
        getattr(module, name)(**params)
    except (TypeError, ValueError) as error:
        raise SpaceError(f"{source}: {what} {name} with {params}: {error}") from None
    return name, params


def _distribution(name: str, raw: Any, where: str) -> Param:
    raw = _mapping(raw, where)
    kind = raw.get("type")
    if kind not in TYPES:
        raise SpaceError(f"{where}: type is {kind!r}; expected one of {', '.join(TYPES)}")
    allowed = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"},
               "categorical": {"choices"}, "settings": {"choices"}}[kind] | {"type"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise SpaceError(f"{where}: {kind} takes {', '.join(sorted(allowed - {'type'}))}, not "
                         f"{unknown[0]!r}{_suggest(unknown[0], sorted(allowed))}")
    try:
        if kind in ("float", "int"):
            if "low" not in raw or "high" not in raw:
                raise SpaceError(f"{where}: {kind} needs low and high")
            number = int if kind == "int" else float
            for bound in ("low", "high"):
                if isinstance(raw[bound], bool) or not isinstance(raw[bound], (int, float)) or (
                        kind == "int" and not isinstance(raw[bound], int)):
                    expected = "an integer" if kind == "int" else "a number"
                    raise SpaceError(f"{where}: {bound} is {raw[bound]!r}; expected {expected}")
            cls = optuna.distributions.IntDistribution if kind == "int" else optuna.distributions.FloatDistribution
            step = raw.get("step", 1 if kind == "int" else None)
            return Param(name, cls(number(raw["low"]), number(raw["high"]), log=bool(raw.get("log", False)),
                                   step=step))
        choices = raw.get("choices")
        if kind == "settings":
            if not isinstance(choices, dict) or not choices:
                raise SpaceError(f"{where}: settings needs choices: a mapping of labels to mappings of config keys")
            values = {str(label): _mapping(value, f"{where}: choice {label!r}") for label, value in choices.items()}
            return Param(name, optuna.distributions.CategoricalDistribution(list(values)), values, settings=True)
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{where}: categorical needs choices: a non-empty list")
        if all(isinstance(c, PRIMITIVES) for c in choices):
            return Param(name, optuna.distributions.CategoricalDistribution(choices))
        # Optuna stores None, bools, numbers and strings: whole lists and mappings are drawn by their JSON text
        values = {json.dumps(c, separators=(", ", ": ")): c for c in choices}
        if len(values) < len(choices):
            raise SpaceError(f"{where}: choices repeat a value")
        return Param(name, optuna.distributions.CategoricalDistribution(list(values)), values)
    except ValueError as error:  # Optuna's own checks: low > high, log with low <= 0, log with a step, ...
        raise SpaceError(f"{where}: {' '.join(str(error).split())}") from None


def _check_key(dotted: str, where: str) -> None:
    top = dotted.split(".")[0]
    if top not in KEYS:
        raise SpaceError(f"{where}: {top!r} is not a config key{_suggest(top, list(KEYS))}")
    if "." in dotted and KEYS[top].kind not in (PARAMS, TRANSFORMS):
        raise SpaceError(f"{where}: {top} does not hold nested values")


def check_candidate(base: dict[str, Any], settings: dict[str, Any], where: str) -> dict[str, Any]:
    """The base config with `settings` put in, checked as train() would check it before running; returns it."""
    from datasets.prepared.transforms import build_v2_pipeline
    from models.training_parts import check_training_parts

    try:
        config = apply_settings(base, settings, "the config")
        check_training_parts(config)
        for key in ("image_augmentations", "tensor_augmentations"):
            build_v2_pipeline(config[key], key)
    except (KeyError, TypeError) as error:
        raise SpaceError(f"{where}: {error}") from None
    except ConfigError as error:
        raise SpaceError(f"{where}: {error.args[0]}") from None
    return config


def load_space(path: Path, base: dict[str, Any]) -> Space:
    """Read and check a search-space file against the base config it will vary."""
    source = str(path)
    if not path.is_file():
        raise SpaceError(f"search-space file {source!r} does not exist")
    try:
        raw = read_yaml(path)
    except ConfigError as error:
        raise SpaceError(error.args[0]) from None
    for key in raw:
        if key not in TOP_KEYS:
            raise SpaceError(f"{source}: unknown key {key!r}{_suggest(str(key), list(TOP_KEYS))}; "
                             f"a space holds {', '.join(TOP_KEYS)}")
    metric, direction = _objective(raw.get("objective", "valid_acc"), source, base)
    sampler = _optuna_class(raw.get("sampler", "TPESampler"), source, "sampler", optuna.samplers,
                            optuna.samplers.BaseSampler)
    pruner = _optuna_class(raw.get("pruner"), source, "pruner", optuna.pruners, optuna.pruners.BasePruner)
    params_raw = _mapping(raw.get("params"), f"{source}: params")
    if not params_raw:
        raise SpaceError(f"{source}: params is empty; name at least one config key with a distribution")
    params = []
    for name, spec in params_raw.items():
        where = f"{source}: params.{name}"
        param = _distribution(str(name), spec, where)
        if param.settings:
            for label, settings in param.values.items():
                for dotted in settings:
                    _check_key(str(dotted), f"{where} choice {label!r}")
        else:
            _check_key(str(name), where)
        for value in param.extremes():
            settings = value if param.settings else {param.name: value}
            shown = next(label for label, v in param.values.items() if v is value) if param.settings else value
            check_candidate(base, settings, f"{where} = {shown!r}")
        params.append(param)
    assert sampler is not None
    pruner_obj = getattr(optuna.pruners, pruner[0])(**pruner[1]) if pruner else optuna.pruners.NopPruner()
    return Space(path, metric, direction, sampler[0], sampler[1], pruner_obj, params)

