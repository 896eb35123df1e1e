"""Make a pretrained encoder checkpoint from the pretraining corpus (`corpus`: synthetic only, or mixed
with real series), or remake one the product ships.

    python -m server.pretrain --out encoder.pt [--set KEY=VALUE ...] [--public-data public.csv]
    python -m server.pretrain --ship NAME [--set KEY=VALUE ...]

--out writes a checkpoint for `pretrained-path`; --ship writes shared/checkpoints/NAME.json, the form
the product ships and loads by default for runs of the same model arguments (shared.pretrain.read_shipped),
and records the command in it. Both hold the weights, the model arguments and the recipe (corpus, training
settings, seed, validation MAE, seconds); the same command with the same seed and thread count gives the
same weights (their SHA-256 is printed). `--set KEY=VALUE` takes the run-config keys of pyproject.toml.
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
from shared.pretrain import SHIPPED_DIR, RECIPE, pretrain, write_shipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="checkpoint file to write (.pt)")
    where.add_argument("--ship", metavar="NAME", help="write shared/checkpoints/NAME.json")
    parser.add_argument("--public-data", default="", help="long-format file added to the corpus (optional)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="run-config key")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    if args.ship and args.public_data:
        raise SystemExit("error: a shipped checkpoint is made from the built-in corpus only (no --public-data)")
    try:
        settings = Settings.checked(parse_overrides(args.set))
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    fed = settings.federation
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    model, meta = pretrain(settings.model, replace(settings.train, max_epochs=fed.pretrain_epochs, seed=fed.seed),
                           fed.corpus_series, fed.corpus_length, fed.seed, args.public_data, corpus=fed.corpus)
    seconds = time.monotonic() - started
    meta |= {"recipe": RECIPE, "seconds": seconds, "threads": args.threads, "torch": str(torch.__version__),
             "command": "python -m server.pretrain " + " ".join(argv if argv is not None else sys.argv[1:])}
    if args.ship:
        out = SHIPPED_DIR / f"{args.ship}.json"
        digest = write_shipped(out, model, meta)
    else:
        out = args.out
        save_model(out, model, meta)
        digest = ""
    print(f"wrote {out}: encoder {count_parameters(model.encoder):,} parameters, validation MAE "
          f"{meta['best_val_mae']:.4f} after {meta['epochs']} epochs, {seconds:.0f} s" + (f", sha256 {digest}" if digest else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
