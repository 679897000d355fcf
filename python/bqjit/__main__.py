"""``python -m bqjit ARGS``: the ``bqjit`` command shipped in the wheel
(prewarm, ptx, cache, verify, tune, version; ``python -m bqjit --help``).

It is the command built with the package's ``libbqjit.so`` and it searches
for NVRTC in the same places, so a cache it prewarms has the keys the
package asks for."""

import os
import sys
from pathlib import Path


def command_path() -> str:
    """The path of the bundled ``bqjit`` command (``BQJIT_COMMAND`` overrides it)."""
    env = os.environ.get("BQJIT_COMMAND")
    if env:
        return env
    return str(Path(__file__).resolve().parent / "bin" / "bqjit")


def main() -> int:
    path = command_path()
    if not os.access(path, os.X_OK):
        sys.stderr.write(
            f"python -m bqjit: the bqjit command is not at {path}: this bqjit was not installed from a wheel "
            "(`pip install .` from the repository ships it); in a build tree run build/tools/bqjit\n"
        )
        return 127
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(path, [path] + sys.argv[1:])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
