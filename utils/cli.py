"""Entry-point wrapper: user errors become one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from utils.errors import UserError


def one_line(error: UserError) -> str:
    """The error's message on one line. A UserError raised in a DataLoader worker reaches the main process with the
    worker's traceback in its text; its last line is the original message."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if len(lines) <= 1:
        return str(error).strip()
    last = lines[-1]
    name = f"{type(error).__module__}.{type(error).__name__}: "
    return last.removeprefix(name).strip()


def run_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run `main(argv)` and exit with its return code; a `UserError` prints one line and exits with its code (2),
    a file system error (an OSError with an errno) one line and exit code 1."""
    try:
        code = main(argv)
    except UserError as error:
        print(one_line(error), file=sys.stderr)
        sys.exit(error.exit_code)
    except OSError as error:
        if error.errno is None:  # not a file system error: a bug, whose traceback is wanted
            raise
        # a full disk, a missing permission, a file where a folder should be: the path says what to fix
        where = f": {error.filename}" if error.filename else ""
        print(f"error: {error.strerror}{where}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def _int_at_least(text: str, minimum: int, words: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{text!r} is not {words}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse names the option when it is not)."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0, "a non-negative integer")


def device_option(text: str) -> str:
    """argparse type of `--device`: auto, cpu, cuda or cuda:N (checked without importing torch)."""
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not auto, cpu, cuda or cuda:N")
