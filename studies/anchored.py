"""What our model gives when its head starts from the site's statistical forecast, not a simple one.

    python -m studies.anchored beijing|nn5 [--history H --val-size V] [--out DIR]   # a preset
    python -m studies.anchored --data FILE --history H ... [--set KEY=VALUE]         # the ceiling's options

The product's head mixes the naive and seasonal-naive forecasts and learns a correction to them
from the encoder's tokens (shared.model). Where the statistical models are far ahead of those (NN5),
that start is far from the best a site can do alone. This check gives the head the site's
`stat_choice` forecast (studies.ceiling: the best of the simple and statistical options on
validation) as one more forecast to mix, and scores per site and cutoff, on the comparison's
cutoffs, splits and test windows, against `stat_choice`:

- `pretrained_on_simple`: the pretrained encoder with a fresh head fine-tuned on the site alone,
  as a site starts (the comparison's `pretrained_only`);
- `pretrained_on_stat`: the same with `stat_choice`'s forecast in the head's mix (training windows
  get in-sample statistical forecasts); the head starts on whichever of its forecasts has the
  lowest MAE on the training windows;
- `served_on_stat`: `pretrained_on_stat` where the guard (shared.guard, on the judging validation
  windows) would serve it, `stat_choice` elsewhere.

No federation: on these data the rounds leave the pretrained encoder where it was (docs/benchmarks.md: What the sites actually send), so
`pretrained_on_*` is what the federated model would be with each head. Writes DIR/anchored.json:
rows per site and cutoff, `summary` over them and `summary_by_site` over sites' means across cutoffs.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from shared.checkpoint import write_json
from shared.config import TrainArgs
from shared.data import Splits, Windows
from shared.guard import decide, divide
from shared.metrics import forecast_errors, window_mae
from shared.model import Forecaster, ModelArgs, normalize
from shared.pretrain import initial_model
from shared.train import anchor_head, fine_tune, predict, round_seed
from simulations.compare import window_slice
from studies.ceiling import parse, plan, print_summary, site_choices, summarize

ARMS = ("pretrained_on_simple", "pretrained_on_stat", "served_on_stat")


class StatAnchored(Forecaster):
    """A Forecaster whose input rows are [window | a given forecast]: the head mixes that forecast,
    normalised by the window's mean and std, beside the simple ones."""

    def __init__(self, args: ModelArgs):
        super().__init__(args)
        self.head.mix = torch.nn.Parameter(torch.zeros(len(args.lags) + 1, args.horizon))

    def forward_normalized(self, xg: torch.Tensor, exog: torch.Tensor | None = None, head: bool = True
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, given = xg[:, : self.args.lookback], xg[:, self.args.lookback:]
        z, mean, std = normalize(x)
        tokens, shared = self.encoder(z)
        if not head:
            return shared, mean, std
        simple = torch.cat([z[:, self.simple_index], ((given - mean) / std)[:, None]], dim=1)
        return self.head(tokens, simple, shared), mean, std


def with_given(w: Windows, given: np.ndarray) -> Windows:
    return Windows(np.hstack([w.x, given.astype(np.float32)]), w.y, w.mask, w.scale, w.series, w.origin)


def site_rows(name: str, splits: Splits, choice: str, given: dict[str, np.ndarray], pretrained: Forecaster,
              train: TrainArgs, margin: float) -> list[dict]:
    """Both heads fine-tuned on one site's fitting windows, scored on test; the guard's choice for the stat one."""
    args, parts = pretrained.args, ("train", "val", "test")
    anchored = Splits(*(with_given(getattr(splits, k), given[k]) for k in parts))
    preds, starts = {}, {}
    for arm, model, data, extra in (("pretrained_on_simple", Forecaster(args), splits, None),
                                    ("pretrained_on_stat", StatAnchored(args), anchored, given["train"])):
        model.encoder.load_state_dict(pretrained.encoder.state_dict())
        starts[arm] = anchor_head(model, splits.train, given=extra)
        fine_tune(model, divide(data)[0], replace(train, seed=round_seed(train.seed, name, -1)))
        preds[arm] = {k: predict(model, getattr(data, k).x, getattr(data, k).exog) for k in ("val", "test")}
    judging = divide(splits)[1]
    decision = decide(window_mae(preds["pretrained_on_stat"]["val"], splits.val.y, splits.val.mask)[judging],
                      window_mae(given["val"], splits.val.y, splits.val.mask)[judging], margin=margin)
    preds["served_on_stat"] = {"test": preds["pretrained_on_stat"]["test"] if decision.serve == "federated"
                               else given["test"]}
    test = splits.test
    errors = {arm: forecast_errors(p["test"], test.y, test.mask, test.scale)["mae"] for arm, p in preds.items()}
    base = forecast_errors(given["test"], test.y, test.mask, test.scale)["mae"]
    return [{"site": name, "arm": arm, "mae": e, "skill": 1 - e / base, "stat_choice": choice,
             **({"start": starts[arm]} if arm in starts else {"serve": decision.serve})} for arm, e in errors.items()
            ] + [{"site": name, "arm": "stat_choice", "mae": base, "skill": 0.0, "stat_choice": choice}]


def main(argv: list[str] | None = None) -> int:
    args = parse(list(sys.argv[1:] if argv is None else argv), prefix="anchored", doc=__doc__)
    started = time.monotonic()
    try:
        frame, config, settings, cutoffs = plan(args)
        if settings.model.futr_exog:
            raise ValueError("the anchored check does not read covariates: run it without futr-exog")
    except ValueError as exc:  # bad data (DataError) or run config: the message names the file, key or series
        raise SystemExit(f"error: {exc}") from None
    torch.set_num_threads(1)
    pretrained, _ = initial_model(settings)
    rows = []
    for cutoff in cutoffs:
        part = window_slice(frame, cutoff, args.history, settings.data.test_size)
        for name, (splits, choice, given) in site_choices(part, settings).items():
            rows += [{**r, "cutoff": str(cutoff)} for r in site_rows(name, splits, choice, given, pretrained,
                                                                  settings.train, settings.site.guard_margin)]
        print(f"[{time.monotonic() - started:5.0f} s] cutoff {cutoff}: {part['site'].nunique()} sites", flush=True)
    summary = summarize(rows, ARMS)
    means = pd.DataFrame(rows).groupby(["site", "arm"], sort=True)["skill"].mean().reset_index()
    by_site = summarize(means.to_dict("records"), ARMS)  # averaged over cutoffs, as the comparison's per_site
    report = {"config": {"data": args.data, "history": args.history, "cutoffs": [str(c) for c in cutoffs], **config,
                         "set": args.set, "command": " ".join(sys.argv)},
              "per_site": rows, "summary": summary, "summary_by_site": by_site,
              "wall_seconds": time.monotonic() - started}
    write_json(Path(args.out) / "anchored.json", report)
    print("per site and cutoff:")
    print_summary(summary)
    print("per site, averaged over cutoffs:")
    print_summary(by_site)
    served = [r for r in rows if r["arm"] == "served_on_stat"]
    print(f"served_on_stat serves the model at {sum(r['serve'] == 'federated' for r in served)} of {len(served)} "
          "site-cutoffs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
