"""``python -m ferroloop script.py [args]`` (or ``-m module [args]``): run a program as ``__main__``
with ferroloop as asyncio's event loop, for programs that call ``asyncio.run`` themselves."""

import runpy
import sys

from . import install

USAGE = "usage: python -m ferroloop (script.py | -m module) [args ...]"


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not argv else sys.stdout)
        return 2 if not argv else 0
    install()
    if argv[0] == "-m":
        if len(argv) < 2:
            print(USAGE, file=sys.stderr)
            return 2
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        runpy.run_path(argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
