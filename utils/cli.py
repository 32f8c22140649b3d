"""Entry-point wrapper: user errors become one line on stderr and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable

from utils.errors import UserError


def run_main(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run `main(argv)` and exit with its return code; a `UserError` prints one line and exits with its code (2)."""
    try:
        code = main(argv)
    except UserError as error:
        print(str(error), file=sys.stderr)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
