"""How the scripts end on a fault: one line on stderr and an exit status, never a traceback.

- a bad command or input (:class:`UsageError`, and the script's own usage errors): status 2,
  ``prog: error: <what, and what is valid>``;
- a file that cannot be written or read (disk full, read-only, ...: ``OSError``, including
  :class:`experiment.files.WriteError`): status 1, ``prog: error: <what failed, at which path>``;
- out of memory: status 1, ``prog: error: out of memory (...)``;
- Ctrl-C / SIGTERM outside a run's epochs (start-up: data, model; the final summary): status
  130 / 143, ``prog: interrupted (outside the epochs: nothing was being trained)``.

Inside a run's epochs, Ctrl-C and SIGTERM are handled by :class:`experiment.Run` (the last
checkpoint stays, and the line says how to resume). Other exceptions are bugs: they keep their
traceback.
"""

import functools
import signal
import sys
from collections.abc import Callable


def describe_os_error(error: OSError) -> str:
    """``error`` as one line: its reason and the path(s) it names."""
    if error.strerror is None:  # raised with a message of its own (e.g. files.WriteError)
        return str(error.args[0] if len(error.args) == 1 else error)
    paths = " -> ".join(str(p) for p in (error.filename, error.filename2) if p is not None)
    return f"{error.strerror}: {paths}" if paths else error.strerror


def one_line_errors(prog: str, usage_errors: tuple[type[BaseException], ...] = ()):
    """Decorate a script's ``main`` so that every fault it meets ends as the table above says."""

    def decorate(main: Callable) -> Callable:
        @functools.wraps(main)
        def wrapper(*args, **kwargs):
            # Imported when main runs, not when a script decorates it: its --help needs no torch.
            import torch

            from .run_folder import Terminated, UsageError, exit_with_error

            try:
                return main(*args, **kwargs)
            except (UsageError, *usage_errors) as error:
                exit_with_error(prog, error)
            except KeyboardInterrupt as interrupt:
                terminated = isinstance(interrupt, Terminated)
                what = "terminated" if terminated else "interrupted"
                print(f"\n{prog}: {what} (outside the epochs: nothing was being trained)", file=sys.stderr)
                raise SystemExit(128 + (signal.SIGTERM if terminated else signal.SIGINT)) from None
            except (MemoryError, torch.OutOfMemoryError) as error:
                reason = (str(error).strip().splitlines() or [""])[0]
                print(f"{prog}: error: out of memory ({reason or type(error).__name__})", file=sys.stderr)
                raise SystemExit(1) from None
            except OSError as error:
                print(f"{prog}: error: {describe_os_error(error)}", file=sys.stderr)
                raise SystemExit(1) from None

        return wrapper

    return decorate
