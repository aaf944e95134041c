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

import contextlib
import functools
import signal
import sys
from collections.abc import Callable

from .run_folder import Terminated, UsageError, exit_with_error, sigterm_as_interrupt


def describe_os_error(error: OSError) -> str:
    """``error`` as one line: its reason and the path(s) it names."""
    if error.strerror is None:  # raised with a message of its own (e.g. files.WriteError)
        return str(error.args[0] if len(error.args) == 1 else error)
    paths = " -> ".join(str(p) for p in (error.filename, error.filename2) if p is not None)
    return f"{error.strerror}: {paths}" if paths else error.strerror


def _out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says memory ran out. torch is looked up, not imported: the scripts import
    it inside ``main``, so that a Ctrl-C while it loads is handled here too (and --help needs none)."""
    torch = sys.modules.get("torch")
    return isinstance(error, MemoryError) or (torch is not None and isinstance(error, torch.OutOfMemoryError))


def one_line_errors(prog: str, usage_errors: tuple[type[BaseException], ...] = ()):
    """Decorate a script's ``main`` so that every fault it meets ends as the table above says."""

    def decorate(main: Callable) -> Callable:
        @functools.wraps(main)
        def wrapper(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except (UsageError, *usage_errors) as error:
                exit_with_error(prog, error)
            except KeyboardInterrupt as interrupt:
                _exit_interrupted(prog, interrupt)
            except (MemoryError, RuntimeError) as error:  # torch.OutOfMemoryError is a RuntimeError
                if not _out_of_memory(error):
                    raise
                reason = (str(error).strip().splitlines() or [""])[0]
                print(f"{prog}: error: out of memory ({reason or type(error).__name__})", file=sys.stderr)
                raise SystemExit(1) from None
            except OSError as error:
                print(f"{prog}: error: {describe_os_error(error)}", file=sys.stderr)
                raise SystemExit(1) from None

        return wrapper

    return decorate


@contextlib.contextmanager
def start_up(prog: str):
    """A script's start-up (parsing its flags, which may load torch): Ctrl-C or SIGTERM there ends
    it in one line, status 130 / 143, as in :func:`one_line_errors`."""
    try:
        with sigterm_as_interrupt():
            yield
    except KeyboardInterrupt as interrupt:
        _exit_interrupted(prog, interrupt)


def _exit_interrupted(prog: str, interrupt: KeyboardInterrupt):
    terminated = isinstance(interrupt, Terminated)
    what = "terminated" if terminated else "interrupted"
    print(f"\n{prog}: {what} (outside the epochs: nothing was being trained)", file=sys.stderr)
    # 128 + the signal number: the shell's status for a process ended by SIGINT / SIGTERM
    raise SystemExit(128 + (signal.SIGTERM if terminated else signal.SIGINT)) from None
