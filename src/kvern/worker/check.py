"""`python -m kvern.worker.check SPEC`: load the spec's tasks module the way a worker does, and say if it fails.

`kvern up` runs this in a child process, so the command (or a test) never imports the user's code itself: a
module that hangs, exits or registers Celery tasks globally cannot affect it. A failure is one line on stderr,
after a marker, since the user's module may print anything on import.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kvern.catalog import load_user_app
from kvern.constants import RET_SPEC
from kvern.errors import SpecError
from kvern.spec import load_spec

ERROR_MARKER = "kvern-spec-error: "


def main(argv: list[str]) -> None:
    try:
        load_user_app(load_spec(Path(argv[0])))
    except SpecError as exc:
        print(f"{ERROR_MARKER}{exc}", file=sys.stderr)
        sys.exit(RET_SPEC)


if __name__ == "__main__":
    main(sys.argv[1:])
