"""One MLflow dashboard for every run, wherever it ran: import run folders (and the thesis's 2020 runs) into a local
store, then open MLflow's UI on it.

    python -m utils.dashboard [FOLDER ...] [--tracking-uri URI] [--thesis] [--no-ui] [--port N] [--config PATH]

FOLDER: run folders or folders of run folders (local `output/`, a Colab output folder synced from Drive, ...);
default: the config's output_path. The store defaults to the config's mlflow_tracking_uri.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from utils.cli import positive_int, run_main
from utils.configuration import load_config
from utils.errors import UserError

HOST = "127.0.0.1"
START_TIMEOUT_S = 120


def find_run_folders(paths: Iterable[Path]) -> list[Path]:
    """The run folders in `paths`: each path is a run folder (it holds config.yml) or a folder of run folders."""
    folders: list[Path] = []
    for path in paths:
        if (path / "config.yml").is_file():
            folders.append(path)
        elif path.is_dir():
            folders += sorted(p for p in path.iterdir() if (p / "config.yml").is_file())
        else:
            raise UserError(f"{path} is not a folder: give run folders or folders holding them (the config's "
                            f"output_path)")
    return folders


def ui_command(tracking_uri: str, port: int, host: str = HOST) -> list[str]:
    """The `mlflow ui` command serving the store."""
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", tracking_uri, "--host", host,
            "--port", str(port)]


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) == 0


def serve(tracking_uri: str, port: int, address: str) -> int:
    """Run `mlflow ui` until Ctrl-C (or until it exits); prints the runs view's address once it answers."""
    if _port_open(HOST, port):
        raise UserError(f"port {port} is in use (another dashboard?): open {address}, or choose --port")
    server = subprocess.Popen(ui_command(tracking_uri, port), start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _port_open(HOST, port):
            if server.poll() is not None:
                raise UserError(f"mlflow ui exited with code {server.returncode}: see its messages above")
            if time.monotonic() > deadline:
                raise UserError(f"mlflow ui did not answer on port {port} within {START_TIMEOUT_S} s")
            time.sleep(0.3)
        print(f"dashboard: {address}  (Ctrl-C stops it)", flush=True)
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:  # the server and its workers
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Import run folders (local, Colab, ...) into a local MLflow store and open its dashboard.")
    parser.add_argument("folders", nargs="*", type=Path, metavar="FOLDER",
                        help="run folders or folders holding them (default: the config's output_path)")
    parser.add_argument("--config", default=None, help="config file (default: config.yml, else config_template.yml)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store to import into (default: the config's mlflow_tracking_uri)")
    parser.add_argument("--thesis", action="store_true",
                        help="also add the thesis's 56 runs of 2020 (once), tagged source: thesis-2020")
    parser.add_argument("--no-ui", action="store_true", help="import only; print the command that opens the dashboard")
    parser.add_argument("--port", type=positive_int, default=5000, help="port of the dashboard (default: %(default)s)")
    args = parser.parse_args(argv)

    config = load_config(args.config)
    # MLflow and Lightning take seconds to import: a mistyped folder is answered before
    folders = find_run_folders(args.folders or [Path(config["output_path"])]) \
        if args.folders or Path(config["output_path"]).is_dir() else []

    from utils.mlflow_logger import prepare_experiment, runs_view_address
    from utils.run_import import import_run_folders, import_thesis_runs

    tracking_uri = args.tracking_uri or config["mlflow_tracking_uri"]
    report = import_run_folders(tracking_uri, folders)
    print(f"{tracking_uri}: {report.line()}")
    if args.thesis:
        thesis = import_thesis_runs(tracking_uri, config["experiment_name"])
        print(f"thesis runs of 2020: {len(thesis.added)} added, {len(thesis.unchanged)} already there")
    _, experiment_id = prepare_experiment(tracking_uri, config["experiment_name"])
    local = not tracking_uri.startswith(("http://", "https://"))  # a store file, not a tracking server
    base = f"http://{HOST}:{args.port}" if local else tracking_uri
    address = runs_view_address(base, experiment_id)
    if not local:  # a tracking server already serves its UI
        print(f"dashboard: {address}")
        return 0
    if args.no_ui:
        print(f"dashboard: {shlex.join(['mlflow', *ui_command(tracking_uri, args.port)[3:]])}\nthen open {address}")
        return 0
    return serve(tracking_uri, args.port, address)


if __name__ == "__main__":
    run_main(main)
