"""``python -m relaykernel [-f CONNECTION_FILE]`` starts the kernel;
``python -m relaykernel install [...]`` writes its kernelspec.

Imports stay inside main() so a spawned worker, which imports this module as
its parent's ``__main__``, pays nothing for it.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "install":
        from .kernelspec import main as install_main

        install_main(args[1:])
        return
    from .supervisor.early import begin

    early = begin(args)  # the first worker starts importing IPython now
    from .supervisor.app import Supervisor

    app = Supervisor.instance(early=early)
    try:  # the arguments are checked now, after the worker started: a bad one ends it
        app.initialize(args)
    except BaseException:  # SystemExit: a usage error, --help, --version
        early.abort()
        raise
    app.start()


if __name__ == "__main__":
    main()
