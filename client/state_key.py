"""Make a site's state key, which seals its state folder at rest (shared.sealing).

    python -m client.state_key PATH

Then give the site's SuperNode --node-config "... state-key='PATH'", and python -m client.forecast
--state-key PATH. Keep a copy somewhere safe: without the key the site's state cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared.sealing import generate_state_key


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit code."""
    p = argparse.ArgumentParser(prog="python -m client.state_key", description=__doc__.splitlines()[0])
    p.add_argument("path", type=Path, help="key file to create (mode 0600; refused if it exists)")
    args = p.parse_args(argv)
    try:
        generate_state_key(args.path)
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.path}: set state-key='{args.path.resolve()}' in this site's --node-config; keep a copy "
          "somewhere safe, without it the site's state cannot be read")
    return 0


if __name__ == "__main__":
    sys.exit(main())
