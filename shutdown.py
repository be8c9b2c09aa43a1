"""Graceful shutdown: Ctrl+C (SIGINT) and SIGTERM, which schedulers send before preemption,
ask the loop to finish its step, write latest.pt and exit 0. A second Ctrl+C exits at once."""
import signal
import sys


class GracefulShutdown:
    def __init__(self):
        self.requested = None  # the name of the signal that asked for the stop
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested and signum == signal.SIGINT:
            print(f"\n{name} again: exiting now without saving.", file=sys.stderr, flush=True)
            sys.exit(130)
        self.requested = name
        print(f"\n{name} received: finishing this step, then saving latest.pt "
              f"(press Ctrl+C again to exit at once).", file=sys.stderr, flush=True)
