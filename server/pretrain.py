"""Make a pretrained encoder checkpoint (for `pretrained-path`) from the pretraining corpus
(`corpus`: synthetic only, or mixed with real series).

    python -m server.pretrain --out encoder.pt
    python -m server.pretrain --out encoder.pt --public-data public.csv --set lookback=56 --set horizon=14

The checkpoint holds the weights, the model arguments to rebuild them, and the corpus (generator,
seed, size, public file). `--set KEY=VALUE` takes the run-config keys of pyproject.toml.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import torch

from shared.checkpoint import save_model
from shared.config import Settings, parse_overrides
from shared.model import count_parameters
from shared.pretrain import pretrain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="checkpoint file to write")
    parser.add_argument("--public-data", default="", help="long-format file added to the corpus (optional)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="run-config key")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)

    try:
        settings = Settings.checked(parse_overrides(args.set))
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    fed = settings.federation
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    model, meta = pretrain(settings.model, replace(settings.train, max_epochs=fed.pretrain_epochs, seed=fed.seed),
                           fed.corpus_series, fed.corpus_length, fed.seed, args.public_data, corpus=fed.corpus)
    save_model(args.out, model, meta)
    print(f"wrote {args.out}: encoder {count_parameters(model.encoder):,} parameters, "
          f"validation MAE {meta['best_val_mae']:.4f} after {meta['epochs']} epochs, "
          f"{time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
