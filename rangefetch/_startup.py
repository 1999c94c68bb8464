"""What happens first when rangefetch is imported: before httpx and pydantic are loaded.

Imported by ``rangefetch/__init__.py`` ahead of everything else, for its
side effects (see the two blocks below); ``runner.run`` calls
``end_quiet_interrupts`` once the command is ready to handle Ctrl-C itself.
"""

import os
import signal
import sys
import threading
from types import FrameType

__all__ = ["end_quiet_interrupts"]


def _interrupted_while_loading(signum: int, frame: FrameType | None) -> None:
    """SIGINT before the command line is ready: one line, exit 130 (as 128 + SIGINT)."""
    sys.stderr.write("rangefetch: interrupted\n")
    sys.stderr.flush()
    # Not SystemExit: raised inside an import that runpy is still resolving,
    # it comes back as an ImportError with a traceback.  Nothing is open yet.
    os._exit(130)


def _quiet_interrupts_while_loading() -> None:
    """When this process is the ``rangefetch`` command, Ctrl-C while it loads ends it with one line.

    Loading the package takes a few tenths of a second (httpx, pydantic),
    and a KeyboardInterrupt raised in an import is printed as a traceback
    before the command has any say.  Until ``runner.run`` starts the event loop
    (it puts Python's handler back: ``end_quiet_interrupts``), SIGINT exits
    130 with one line instead.  Imported as a library, nothing changes.
    """
    argv = getattr(sys, "orig_argv", sys.argv)
    pairs = zip(argv, argv[1:], strict=False)
    as_module = "-mrangefetch" in argv or any(a == "-m" and b == "rangefetch" for a, b in pairs)
    as_script = bool(sys.argv) and os.path.basename(sys.argv[0]) == "rangefetch"
    if (as_module or as_script) and threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _interrupted_while_loading)


def end_quiet_interrupts() -> None:
    """Give SIGINT back to Python (KeyboardInterrupt), for the command's own handling."""
    if signal.getsignal(signal.SIGINT) is _interrupted_while_loading:
        signal.signal(signal.SIGINT, signal.default_int_handler)


_quiet_interrupts_while_loading()

# httpx imports its own command line (click, rich and pygments: ~50 ms of CPU
# per process, a sixth of rangefetch's start-up) whenever those are
# installed, and rangefetch never uses it.  Unless httpx is already loaded,
# it takes its no-CLI path here: ``httpx.main()`` then says to install httpx[cli].
if "httpx" not in sys.modules:
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
