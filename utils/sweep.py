"""Hyperparameter search on Optuna: each trial is an ordinary `train()` run of the base config with drawn values.

    python -m utils.sweep --space SPACE.yml [--config BASE.yml] [--study NAME] [--storage URL] [--n-trials N]
                          [--timeout S] [--set KEY=VALUE ...] [--report]

Several workers are several processes running the same command against the same study and storage (one per GPU,
one per machine); Optuna's storage hands each its own trials. See documentation/sweeps.md.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import sys
import warnings
from pathlib import Path
from types import FrameType
from typing import Any

from utils.cli import one_line, positive_int, run_main
from utils.config_schema import KEYS
from utils.configuration import load_config
from utils.errors import ConfigError, UserError
from utils.logging_setup import setup_logging

log = logging.getLogger("cars")

# Seconds between a running trial's heartbeats (RDB storages), and after which a silent trial counts as dead: a
# worker killed outright (SIGKILL, a lost machine) leaves a RUNNING trial that the next trial start marks failed.
HEARTBEAT_S, GRACE_S = 60, 300
# A worker stops after this many of its own trials failed in a row (broken data, a GPU gone): no endless retries.
MAX_FAILURES_IN_A_ROW = 3


class TrialFailed(Exception):
    """A trial that failed on its own (a setting that cannot train, a crash): the worker goes on to the next."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m utils.sweep",
                                     description="Search hyperparameters with Optuna; each trial is a train() run.")
    parser.add_argument("--space", required=True, help="search-space YAML file (see configs/sweeps/)")
    parser.add_argument("--config", default=None,
                        help="base config the trials vary (default: config.yml, else config_template.yml)")
    parser.add_argument("--study", default=None, help="study name (default: the space file's name without .yml)")
    parser.add_argument("--storage", default=None,
                        help="Optuna storage: an RDB URL (sqlite:///..., postgresql://..., mysql://...) or the "
                             "path of a journal file (default: sqlite:///<output_path>/sweeps/<study>/study.db)")
    parser.add_argument("--n-trials", type=positive_int, default=None,
                        help="trials the study should hold in all, finished (complete or pruned) or running; "
                             "workers stop when it has them (default: no limit)")
    parser.add_argument("--timeout", type=positive_int, default=None,
                        help="seconds after which this worker starts no new trial (default: no limit)")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override keys of the base config, as train.py --set does; repeatable")
    parser.add_argument("--report", action="store_true",
                        help="run no trial: print the study's trials and best trial, write best.yml")
    return parser.parse_args(argv)


def open_storage(spec: str) -> Any:
    """An Optuna storage: an RDB URL (with heartbeats) or, for anything without '://', a journal file."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    if "://" not in spec:
        path = Path(spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        # the open lock (O_EXCL) also works on NFS, where the default symlink lock may not
        return optuna.storages.JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # Optuna marks heartbeats experimental
            return optuna.storages.RDBStorage(spec, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    except (ImportError, ModuleNotFoundError) as error:
        # Optuna wraps SQLAlchemy's ModuleNotFoundError, which names the missing driver module
        missing = getattr(error.__cause__, "name", None) or error.name or "?"
        raise ConfigError(f"--storage {spec}: its database driver {missing!r} is not installed; e.g. pip install "
                          "'psycopg[binary]' for postgresql://, PyMySQL for mysql+pymysql://") from None
    except Exception as error:  # noqa: BLE001 - SQLAlchemy's errors (bad URL, server not reachable) are user errors
        raise ConfigError(f"--storage {spec}: cannot open it ({type(error).__name__}: "
                          f"{' '.join(str(error).split())[:200]})") from None


def trial_config(base: dict[str, Any], settings: dict[str, Any], study: str, number: int) -> dict[str, Any]:
    """The base config with a trial's values, its run named `<study>-trial<number>` and tagged with both."""
    from utils.sweep_space import apply_settings

    config = apply_settings(base, settings, f"trial {number}")
    config["run_name"] = f"{study}-trial{number}"
    config["tags"] = [*config["tags"], f"study:{study}", f"trial:{number}"]
    return config


def one_device(config: dict[str, Any]) -> dict[str, Any]:
    """A trial trains on one device: 'auto' becomes 1; more is refused (start one worker per GPU instead)."""
    devices = config["devices"]
    if devices == "auto":
        return {**config, "devices": 1}
    many = devices == -1 or (isinstance(devices, int) and devices > 1) or (isinstance(devices, list) and len(devices) > 1)
    if many or config["num_nodes"] > 1:
        raise ConfigError(f"a sweep trial trains on one device (devices {devices!r}, num_nodes {config['num_nodes']}"
                          "): set devices: 1 and start one worker per GPU, e.g. CUDA_VISIBLE_DEVICES=1 python -m "
                          "utils.sweep ... (see documentation/sweeps.md)")
    return config


class WorkerSignals:
    """Ctrl-C/SIGTERM in a worker. During a trial's training, train() handles them itself (the run stops at the
    next batch and says so); while a trial starts, it stops at once (KeyboardInterrupt); between trials, the
    worker starts no new trial. Either way Optuna marks the current trial failed and the study stays consistent."""

    def __init__(self) -> None:
        self.study: Any = None
        self.in_trial = False
        self.requested: str | None = None

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = signal.Signals(signum).name
        print(f"\n{self.requested} received: the worker stops", file=sys.stderr, flush=True)
        if self.in_trial:
            raise KeyboardInterrupt
        if self.study is not None:
            try:
                self.study.stop()
            except RuntimeError:  # outside study.optimize: nothing to stop
                pass


class Worker:
    """Runs trials of one study: the objective (a train() run) and the after-trial callback."""

    def __init__(self, study: Any, space: Any, base: dict[str, Any], n_trials: int | None,
                 signals: WorkerSignals) -> None:
        self.study, self.space, self.base, self.n_trials, self.signals = study, space, base, n_trials, signals
        self.failures_in_a_row = 0
        self.stopped_because: str | None = None

    def counted(self) -> int:
        """Trials towards --n-trials: finished (complete or pruned) or running."""
        from optuna.trial import TrialState

        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        return len(self.study.get_trials(deepcopy=False, states=states))

    def objective(self, trial: Any) -> float:
        import optuna

        from models.training_run import Interrupted, train
        from utils.run_outputs import read_summary
        from utils.sweep_pruning import PruningCallback
        from utils.sweep_report import CONFIG_ATTR, stored_config

        self.signals.in_trial = True
        try:
            if self.signals.requested:  # the signal came while Optuna was drawing this trial's values
                raise KeyboardInterrupt
            try:
                config = trial_config(self.base, self.space.suggest(trial), self.study.study_name, trial.number)
            except ConfigError as error:
                log.error("trial %d failed: %s", trial.number, one_line(error))
                raise TrialFailed(error.args[0]) from None
            run_dir = Path(config["output_path"]) / config["run_name"]
            trial.set_user_attr("run_dir", str(run_dir))
            trial.set_user_attr("metric", self.space.metric)
            trial.set_user_attr(CONFIG_ATTR, stored_config({**config, "tags": self.base["tags"]}))
            log.info("trial %d of study %s: %s", trial.number, self.study.study_name,
                     ", ".join(f"{k}={v!r}" for k, v in trial.params.items()))
            pruning = PruningCallback(trial, self.space.epoch_metric)
            try:
                train(config, callbacks=[pruning])
            except (Interrupted, KeyboardInterrupt):
                trial.set_user_attr("status", "interrupted")
                raise
            except Exception as error:
                trial.set_user_attr("status", "failed")
                if isinstance(error, UserError):  # a setting this trial drew: one line, as train.py gives it
                    log.error("trial %d failed: %s", trial.number, one_line(error))
                else:  # a crash: its traceback is wanted
                    log.exception("trial %d failed", trial.number)
                raise TrialFailed(f"{type(error).__name__}: {error}") from error
            finally:
                self.signals.install()  # train() leaves its own handlers behind
            summary = read_summary(run_dir)
            trial.set_user_attr("status", summary.get("status"))
            if summary.get("status") == "pruned":
                raise optuna.TrialPruned(f"after epoch {pruning.pruned_at}")
            value = summary.get(self.space.summary_key)
            if value is None:
                raise TrialFailed(f"run {run_dir} has no {self.space.summary_key} in its summary.json")
            return float(value)
        finally:
            self.signals.in_trial = False

    def after_trial(self, study: Any, trial: Any) -> None:
        from optuna.trial import TrialState

        value = f" {self.space.metric} {trial.value:.6g}" if trial.value is not None else ""
        log.info("trial %d: %s%s", trial.number, trial.state.name.lower(), value)
        self.failures_in_a_row = self.failures_in_a_row + 1 if trial.state == TrialState.FAIL else 0
        if self.failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            self.stopped_because = f"{self.failures_in_a_row} trials in a row failed (see the log above)"
        elif self.n_trials is not None and self.counted() >= self.n_trials:
            self.stopped_because = f"the study holds {self.n_trials} trials (--n-trials)"
        if self.stopped_because:
            study.stop()

    def run(self, timeout: int | None) -> None:
        if self.n_trials is not None and self.counted() >= self.n_trials:
            log.info("study %s already holds %d trials (--n-trials %d): no new trial", self.study.study_name,
                     self.counted(), self.n_trials)
            return
        self.study.optimize(self.objective, timeout=timeout, catch=(TrialFailed,), callbacks=[self.after_trial],
                            gc_after_trial=True)
        if self.stopped_because:
            log.info("worker stops: %s", self.stopped_because)


def open_study(args: argparse.Namespace, space: Any, study_name: str, sweep_dir: Path) -> Any:
    """Create the study, or load it when it exists (the same command continues it)."""
    import optuna
    from filelock import FileLock

    spec = args.storage or f"sqlite:///{(sweep_dir / 'study.db').resolve()}"
    if spec.startswith("sqlite:///"):
        Path(spec.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(sweep_dir / ".create.lock"))  # two workers starting at once create the tables once
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with lock:
        storage = open_storage(spec)
        existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
        if args.report and study_name not in existing:
            raise ConfigError(f"--report: no study {study_name!r} in {spec}"
                              f"{'; it holds ' + ', '.join(sorted(existing)) if existing else ''}")
        seed_offset = existing[study_name].n_trials if study_name in existing else 0
        if study_name in existing and existing[study_name].direction.name.lower() != space.direction:
            raise ConfigError(f"study {study_name!r} in {spec} is to {existing[study_name].direction.name.lower()}; "
                              f"the space's objective {space.metric} is to {space.direction}: use another --study")
        study = optuna.create_study(storage=storage, study_name=study_name, direction=space.direction,
                                    sampler=space.sampler(seed_offset), pruner=space.pruner, load_if_exists=True)
    log.info("study %s in %s (%d trials so far)", study_name, spec, seed_offset)
    return study


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging("INFO")  # Lightning's loggers later: it takes seconds to import, and errors answer at once
    base = one_device(load_config(args.config, args.overrides))
    study_name = args.study or Path(args.space).stem
    if not KEYS["run_name"].kind.check(study_name):
        raise ConfigError(f"study name {study_name!r} is not {KEYS['run_name'].kind.expected}: use --study NAME")
    import optuna

    from utils.sweep_report import report
    from utils.sweep_space import load_space

    space = load_space(Path(args.space), base)
    setup_logging(base["loglevel"], base["logging_dir"], lightning=True)
    # our log says what each trial is and how it ended (Optuna's would add a traceback to every failed trial)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    sweep_dir = Path(base["output_path"]) / "sweeps" / study_name
    signals = WorkerSignals()
    signals.install()
    study = open_study(args, space, study_name, sweep_dir)
    signals.study = study
    interrupted = None
    if not args.report:
        try:
            Worker(study, space, base, args.n_trials, signals).run(args.timeout)
        except (KeyboardInterrupt, UserError) as error:
            if not isinstance(error, KeyboardInterrupt) and error.exit_code != 130:
                raise
            interrupted = error
    print(report(study, sweep_dir))
    if interrupted is not None or signals.requested:
        args_given = argv if argv is not None else sys.argv[1:]
        command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "utils.sweep", *args_given])
        trial = "its running trial ended as failed" if interrupted is not None else "no trial was running"
        raise WorkerStopped(f"worker of study {study_name} stopped by {signals.requested or 'a signal'}; {trial}, "
                            f"the study is intact; continue it with: {command}")
    return 0


class WorkerStopped(UserError):
    """A worker stopped by a signal; the message says how to continue the study."""

    prefix = "interrupted"
    exit_code = 130


if __name__ == "__main__":
    run_main(main)
