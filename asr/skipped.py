"""How a command that skipped bad input says so: the list on stderr, and exit status 3."""
from __future__ import annotations

import sys

EXIT_SKIPPED = 3


def report_skipped(problems: list[str], what: str) -> int:
    """Print ``N <what> skipped:`` and the first 20 problems to stderr; the exit status for them
    (0 when there are none), which tells scripts that something was skipped."""
    if not problems:
        return 0
    print(f"{len(problems)} {what} skipped:", file=sys.stderr)
    for p in problems[:20]:
        print(f"  {p}", file=sys.stderr)
    if len(problems) > 20:
        print(f"  ... and {len(problems) - 20} more", file=sys.stderr)
    return EXIT_SKIPPED
