"""``python -m ferroloop script.py [args]`` (or ``-m module [args]``): run a program as ``__main__``
with ferroloop as asyncio's event loop, for programs that call ``asyncio.run`` themselves."""

import os
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
        path = argv[0]
        try:
            with open(path, "rb"):
                pass
        except IsADirectoryError:
            pass  # a directory with a __main__.py: runpy puts it on sys.path
        except OSError as exc:
            # python's own words for `python missing.py`: the path joined to the working
            # directory (not normalised) and the name python was invoked by.
            print(
                f"{sys.orig_argv[0]}: can't open file {os.path.join(os.getcwd(), path)!r}: "
                f"[Errno {exc.errno}] {exc.strerror}",
                file=sys.stderr,
            )
            return 2
        else:
            _script_dir_first(path)
        sys.argv = argv
        runpy.run_path(path, run_name="__main__")
    return 0


def _script_dir_first(path):
    """``sys.path[0]`` as ``python script.py`` sets it: the folder of the script (symlinks
    resolved), in place of the working directory that ``python -m ferroloop`` put there; nothing
    under ``-P`` (safe_path), which adds neither."""
    if sys.flags.safe_path:
        return
    folder = os.path.dirname(os.path.realpath(path))
    if sys.path and sys.path[0] == os.getcwd():
        sys.path[0] = folder
    else:
        sys.path.insert(0, folder)


if __name__ == "__main__":
    sys.exit(main())
