"""Console and daily log-file logging for the scripts."""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from pathlib import Path
from typing import TextIO

LOGGER_NAME = "cars"
LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning_fabric")


def _not_an_advert(record: logging.LogRecord) -> bool:
    """Lightning advertises its cloud products ("💡 Tip: ...") at every run; our console is for the run."""
    return not str(record.msg).startswith("💡")


def setup_logging(level: str = "INFO", logging_dir: str | Path | None = None, lightning: bool = False,
                  stream: TextIO | None = None) -> Path | None:
    """Log `cars` (and, with `lightning`, Lightning's) messages to the console and, when a folder is given, to
    `<dir>/<YYYYMMDD>.log`; the console is `stream` (default: stdout).

    Returns the log file's path, or None. Calling it again replaces the handlers it installed before. With
    `lightning`, in DDP processes other than rank 0 only warnings reach the console and nothing reaches the file;
    without it, Lightning (and torch, which takes seconds to import) is not imported at all.
    """
    logger = logging.getLogger(LOGGER_NAME)
    if lightning:
        from lightning_fabric.utilities.rank_zero import rank_zero_only

        for name in LIGHTNING_LOGGERS:
            # The logger Lightning's rank_zero_info writes through (the same object once Lightning is imported).
            emitter = logging.getLogger(f"{name}.utilities.rank_zero")
            if _not_an_advert not in emitter.filters:
                emitter.addFilter(_not_an_advert)
        if rank_zero_only.rank != 0:
            level, logging_dir = "WARNING", None
    logger.setLevel(level)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler(stream or sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    log_file = None
    if logging_dir is not None:
        folder = Path(logging_dir)
        folder.mkdir(parents=True, exist_ok=True)
        log_file = folder / f"{datetime.now():%Y%m%d}.log"
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        file_handler.set_name("cars-file")
        logger.addHandler(file_handler)
        for name in LIGHTNING_LOGGERS if lightning else ():
            other = logging.getLogger(name)
            for handler in [h for h in other.handlers if h.get_name() == "cars-file"]:
                other.removeHandler(handler)
            other.addHandler(file_handler)
    return log_file
