"""The ``buildpy`` command: the thin client first, the engine only when needed.

A command that a daemon runs (BUILDPY_HOST, --addr, or the default socket) never
imports more than ``buildpy.client`` (standard library only): not even the
argument parser of ``buildpy.cli``, whose imports cost about as much as the rest
of a no-op rebuild through the daemon. Everything else goes to
``buildpy.cli.main``, which parses the flags and runs the engine in-process.
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    from buildpy import client

    target = client.forward_target(sys.argv[1:])
    if target is not None:
        code = client.run_cli(target[0], target[1], explicit=target[2])
        if code is not None:
            # Nothing is left to tear down: skip the interpreter's finalization,
            # a few milliseconds of every command sent to a daemon.
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):  # a closed pipe: nothing to keep
                    pass
            os._exit(code)
    from buildpy.cli import main as embedded

    return embedded(forwarded=target is not None)
