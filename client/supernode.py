"""`flower-supernode` with shorter waits: python -m client.supernode [--poll S] FLOWER-SUPERNODE-ARGS...

Flower 1.41's SuperNode (flwr/supernode/start_client_internal.py) sleeps a hard-coded 3 s whenever
a pull finds no message, and 0.5 s between checks for its ClientApp's reply, so a site picks up
each round's message up to 3 s after the server sent it. This runs Flower's own `flower-supernode`
(same arguments) with every sleep of that loop capped at `--poll` seconds (default 0.5), and the
SuperExec it starts polling its own SuperNode for tasks every 0.1 s (Flower's default 1 s; a
request on loopback that costs the SuperLink nothing) unless FLWR_SUPEREXEC_TASK_POLL_INTERVAL
is set: with one site per machine, rounds then cost 4.4 s beyond training instead of 5.3 s at
0.5 s (docs/studies.md, Round overhead). Each
idle site then asks the SuperLink for work 1/poll times a second instead of every 3 s: mind the
SuperLink's load with hundreds of sites. Plain `flower-supernode` keeps working; this only waits
less. Only for the Flower version it was checked against (the loop may change in another).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types

import flwr
from flwr.supernode import start_client_internal
from flwr.supernode.cli.flower_supernode import flower_supernode

CHECKED_FLOWER = "1.41.0"
DEFAULT_POLL = 0.5
SUPEREXEC_POLL = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"  # how often the SuperExec looks for a ClientApp to start
SUPEREXEC_DEFAULT_POLL = 0.1


def shorten_waits(poll: float) -> None:
    """Cap every sleep of the SuperNode's message loop at `poll` seconds."""
    if flwr.__version__ != CHECKED_FLOWER:
        raise SystemExit(f"client.supernode was checked against Flower {CHECKED_FLOWER}, not {flwr.__version__}: "
                         "run flower-supernode itself")
    if poll <= 0:
        raise SystemExit(f"--poll must be positive, not {poll}")
    capped = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("__")})
    capped.sleep = lambda seconds: time.sleep(min(seconds, poll))
    start_client_internal.time = capped


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--poll", type=float, default=DEFAULT_POLL)
    ours, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    shorten_waits(ours.poll)
    os.environ.setdefault(SUPEREXEC_POLL, str(SUPEREXEC_DEFAULT_POLL))  # read by the SuperExec the SuperNode starts
    sys.argv = ["flower-supernode", *rest]
    flower_supernode()


if __name__ == "__main__":
    main()
