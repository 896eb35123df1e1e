"""Cold start: sites with little history joining sites with a lot, backtested in rotating folds.

    python -m simulations.compare --data PATH --out DIR --new-sites 0.25 --new-history 28,56,112 ...

For each cutoff, the sites are dealt into folds (every site is new once per cutoff). In each fold the
established sites keep `--history` points before the cutoff and run the App through Flower (the
product's rounds); the new sites keep only each `--new-history` value before the cutoff and join
afterwards: each receives the final shared encoder and is tested on rolling origins over the
`test-size` points after the cutoff. Per new site and history the arms are:
  - every alone option fitted on what the site has (naive, seasonal naive, AutoETS, AutoTheta) and
    `alone_best`, the one it picks on the last horizon of its history; `alone_hindsight`, the best on
    test (a bound no site can reach);
  - `federated_shared` (the shared model zero-shot: a fresh head is the identity),
    `federated_personal` (its head trained on the site's own windows, when it has some),
    `served` (what the new-site guard serves: shared.guard.decide_new);
  - `pretrained_zero_shot` (the encoder before any round), `pooled_oracle` (one shared model of the
    established sites' windows pooled: the bound of the federation, pools private data), and with
    `--arms ...,federated_scratch` the federation from a random encoder (`federated_scratch_shared`).
The established sites only train (their own figures are those of the equal-history comparison); the
prior they would report with `prior-histories` is computed here with the same functions (shared.newsite).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from shared.checkpoint import load_encoder, write_atomic, write_json
from shared.config import Settings
from shared.data import Splits, Windows, make_splits, regularize, season_length
from shared.guard import Prior, decide_new, divide
from shared.metrics import METRICS, forecast_errors
from shared.model import Forecaster, ModelArgs
from shared.newsite import (ShortHistoryCase, alone_predictions, own_val_size, pick_alone, short_history_case,
                            short_history_evidence)
from shared.pretrain import initial_model
from shared.train import linear_probe, predict, round_seed, train_shared
from simulations.report import arm_colors, json_safe, plot_skill_vs_history, save_figure

SCRATCH = "federated_scratch"
PLOTTED = ("served", "federated_shared", "federated_personal", "federated_scratch_shared", "pooled_oracle",
           "pretrained_zero_shot", "alone_hindsight", "auto_ets", "auto_theta", "naive", "seasonal_naive_7",
           "seasonal_naive_24")


def deal_folds(sites: list[str], folds: int, seed: int) -> list[list[str]]:
    """Sites dealt into `folds` groups at random (seeded): each group is new once."""
    order = np.random.default_rng(seed).permutation(len(sites))
    return [sorted(sites[i] for i in order[f::folds]) for f in range(folds)]


def _slice(frame: pd.DataFrame, cutoff: pd.Timestamp, history: int, ahead: int) -> pd.DataFrame:
    """A site's regularised rows from `history` points before the cutoff to `ahead` points after it."""
    offset = pd.tseries.frequencies.to_offset(frame.attrs["freq"])
    part = frame[(frame["ds"] >= cutoff - history * offset) & (frame["ds"] < cutoff + ahead * offset)]
    part = part.reset_index(drop=True)
    part.attrs = dict(frame.attrs)
    return regularize(part)[0]


def _test_windows(part: pd.DataFrame, args: ModelArgs, history: int, test_size: int, stride: int) -> Windows:
    return make_splits(part, args.lookback, args.horizon, 0, test_size, stride, covariates=args.futr_exog,
                       joining=True).test


def _scores(pred: np.ndarray, test: Windows) -> dict:
    return forecast_errors(pred, test.y, test.mask, test.scale)


def shared_model(encoder: dict[str, torch.Tensor], args: ModelArgs) -> Forecaster:
    model = Forecaster(args)
    load_encoder(model, encoder)
    return model.eval()


def pooled_model(pretrained: Forecaster, established: dict[str, Splits], settings: Settings) -> Forecaster:
    """One shared model of the established sites' fitting windows pooled (early-stopped on their pooled
    fitting-validation windows), from the pretrained encoder: the bound of what their federation learns."""
    args = pretrained.args
    parts = [divide(s)[0] for s in established.values()]
    pooled = Splits(*(Windows.concat([getattr(p, k) for p in parts], args.lookback, args.horizon)
                      for k in ("train", "val", "test")))
    model = shared_model(pretrained.encoder.state_dict(), args)
    train_shared(model, pooled, replace(settings.train, lr=settings.train.lr * settings.train.encoder_lr_ratio))
    return model.eval()


def prior(cases: dict[str, dict[int, ShortHistoryCase]], model: Forecaster, margin: float) -> dict[int, Prior]:
    """What the established sites report with `prior-histories` (client.site.Site.short_history), from their
    cases (site -> history -> case), summed per history length."""
    out: dict[int, Prior] = {}
    for by_history in cases.values():
        for history, case in by_history.items():
            out[history] = out.get(history, Prior()) + case.judge(model).report(margin)
    return dict(sorted(out.items()))


def new_site_rows(name: str, frame: pd.DataFrame, cutoff: pd.Timestamp, history: int, models: dict[str, Forecaster],
                  settings: Settings, evidence: Prior, stat_models: tuple[str, ...]) -> tuple[list[dict], dict]:
    """(result rows, guard record) of one new site keeping `history` points before the cutoff."""
    args, data = settings.model, settings.data
    season = season_length(frame.attrs["freq"])
    part = _slice(frame, cutoff, history, data.test_size)
    test = _test_windows(part, args, history, data.test_size, data.stride)
    hist = part[part["ds"] < cutoff].reset_index(drop=True)
    hist.attrs = dict(part.attrs)
    preds = alone_predictions(part, test, history, args.horizon, args.lags, season, stat_models)
    choice = pick_alone(hist, args.horizon, args.lags, season, stat_models)
    rows = {arm: _scores(p, test) for arm, p in preds.items()}
    rows["alone_best"] = rows[choice]
    rows["alone_hindsight"] = min((rows[a] for a in preds), key=lambda r: r["mae"])
    for arm, model in models.items():
        rows[arm] = _scores(predict(model, test.x, test.exog), test)
    shared = models["federated_shared"]
    val = own_val_size(history, args.lookback, args.horizon, data.stride, data.val_size)
    own = short_history_evidence(hist, shared, history - val, val, data.stride, season, stat_models) if val else None
    decision = decide_new(history, evidence, own.shared_mae if own else [], own.alone_mae if own else [])
    personal = _personalised(shared, hist, val, settings, round_seed(settings.train.seed, name, -history))
    if personal is not None:
        rows["federated_personal"] = _scores(predict(personal, test.x, test.exog), test)
    rows["served"] = rows["federated_shared"] if decision.serve == "shared" else rows["alone_best"]
    guard = {"site": name, "history": history, "alone_choice": choice, **decision.to_dict()}
    return [{"site": name, "arm": arm, "role": "new", "history": history, **r} for arm, r in rows.items()], guard


def _personalised(shared: Forecaster, hist: pd.DataFrame, val: int, settings: Settings, seed: int) -> Forecaster | None:
    """The shared model with the site's head trained on its own windows (early-stopped on its own
    validation windows), or None when its history holds no training window."""
    args = shared.args
    if not val:
        return None
    splits = make_splits(hist, args.lookback, args.horizon, val, 0, settings.data.stride, covariates=args.futr_exog,
                         joining=True)
    if not len(splits.train):
        return None
    model = shared_model(shared.encoder.state_dict(), args)  # its head starts as the identity
    linear_probe(model, splits, replace(settings.train, seed=seed))
    return model.eval()


def load_global(out: Path) -> dict[str, torch.Tensor]:
    """The final shared encoder a run wrote (server.rounds' global_encoder.pt)."""
    return torch.load(out / "global_encoder.pt", map_location="cpu", weights_only=True)["encoder"]


def summarize(rows: list[dict], histories: list[int]) -> tuple[list[dict], dict]:
    """Per arm and history at new sites: median skill over alone_best (and over each alone option),
    share of site-cutoffs worse than alone_best by more than 5 %; and time to accuracy."""
    frame = pd.DataFrame([r for r in rows if r["role"] == "new"])
    key = ["cutoff", "site", "history"]
    mae = frame.pivot_table(index=key, columns="arm", values="mae", aggfunc="first")
    alone = [a for a in mae.columns if a.startswith(("naive", "seasonal_naive", "auto_"))]
    summary = []
    for arm in mae.columns:
        for history, g in mae.groupby(level="history"):
            values = g[arm].dropna()
            if not len(values):
                continue
            skill = 1 - values / g.loc[values.index, "alone_best"]
            summary.append({
                "arm": arm, "history": int(history), "site_cutoffs": int(len(values)),
                "median_skill": float(skill.median()), "share_worse_5pct": float((skill < -0.05).mean()),
                "share_better_than_hindsight": float((values < g.loc[values.index, "alone_hindsight"]).mean()),
                "median_skill_vs": {a: float((1 - values / g.loc[values.index, a]).median()) for a in alone}})
    first = min(histories)
    served = mae.xs(first, level="history")["served"]
    days = {}
    for (cutoff, site), target in served.items():
        alone_mae = mae.loc[(cutoff, site), "alone_best"]
        matched = [int(h) for h, v in alone_mae.items() if v <= target]
        days[f"{cutoff}/{site}"] = min(matched) if matched else None
    known = [d for d in days.values() if d is not None]
    reached = {"served_at_history": first, "sites": len(days),
               "median_history_alone_needs": float(np.median(known)) if len(known) > len(days) / 2 else None,
               "share_never_within_histories": 1 - len(known) / max(1, len(days)), "per_site": days}
    return summary, reached


def markdown(report: dict) -> str:
    cfg = report["config"]
    lines = ["# Cold start: new sites joining established ones", "",
             f"Data: {cfg['data']}; {cfg['folds']} folds x {len({c['cutoff'] for c in report['cutoffs']})} cutoffs; "
             f"established sites keep "
             f"{cfg['history']} points, new sites {cfg['new_histories']}; {cfg['rounds']} rounds.",
             f"Command: `{cfg['command']}`", "",
             "Skill = 1 - MAE / MAE of alone_best (the alone option the new site picks on the last horizon of "
             "its own history), median over new site-cutoffs. pooled_oracle pools private data: a bound only.", "",
             "| arm | history | site-cutoffs | median skill | worse by >5 % | better than hindsight-best |",
             "|---|---|---|---|---|---|"]
    for r in sorted(report["summary"], key=lambda r: (r["history"], -r["median_skill"])):
        lines.append(f"| {r['arm']} | {r['history']} | {r['site_cutoffs']} | {r['median_skill']:+.1%} | "
                     f"{r['share_worse_5pct']:.0%} | {r['share_better_than_hindsight']:.0%} |")
    alone = sorted({a for r in report["summary"] for a in r["median_skill_vs"]})
    lines += ["", "Median skill over each alone option the new site has (each fitted on its own history):", "",
              "| arm | history | " + " | ".join(alone) + " |", "|---|---|" + "---|" * len(alone)]
    for r in sorted(report["summary"], key=lambda r: (r["history"], r["arm"])):
        if r["arm"] in ("served", "federated_shared", "federated_personal", "pooled_oracle"):
            lines.append(f"| {r['arm']} | {r['history']} | "
                         + " | ".join(f"{r['median_skill_vs'][a]:+.1%}" for a in alone) + " |")
    lines += ["", "The new-site guard's evidence: established sites' reports summed over folds and cutoffs (on "
              "their validation windows), how often new sites were served the shared model, and how often it "
              "lost by more than 5 % at new sites on test:", "",
              "| history | established site-reports | won | lost by >5 % | new sites served shared | shared worse "
              "by >5 % at new sites |", "|---|---|---|---|---|---|"]
    worse = {r["history"]: r["share_worse_5pct"] for r in report["summary"] if r["arm"] == "federated_shared"}
    for history in cfg["new_histories"]:
        total = sum((Prior(**row["prior"][str(history)]) for row in report["prior"] if str(history) in row["prior"]),
                    Prior())
        guards = [g for g in report["guard"] if g["history"] == history]
        served = sum(g["serve"] == "shared" for g in guards)
        lines.append(f"| {history} | {total.sites} | {_share(total.won, total.sites)} | "
                     f"{_share(total.lost, total.sites)} | {served} of {len(guards)} | {worse[history]:.0%} |")
    t = report["time_to_accuracy"]
    need = t["median_history_alone_needs"]
    lines += ["", f"Time to accuracy: with {t['served_at_history']} points a new site is served a forecast that, "
              f"alone, it matches at the median only with {need if need is not None else 'more than the largest'} "
              f"points of history ({t['share_never_within_histories']:.0%} of site-cutoffs never within "
              f"{max(cfg['new_histories'])}).", ""]
    return "\n".join(lines)


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else "-"


def _sites(frame: pd.DataFrame, names: list[str]) -> dict[str, pd.DataFrame]:
    out = {}
    for name in names:
        rows = frame[frame["site"] == name].reset_index(drop=True)
        rows.attrs = dict(frame.attrs)
        out[name] = rows
    return out


def run(config: dict, frame: pd.DataFrame, cutoffs: list[pd.Timestamp], history: int, new_histories: list[int],
        folds: int, arms: list[str], out: Path, federated: Callable[[dict, pd.DataFrame, pd.Timestamp, Path], None],
        log: Callable[[str], None], meta: dict) -> list[dict]:
    """Every fold at every cutoff; rewrites report.json and report.md after each; returns the summary.

    `federated(run_config, established_frame, cutoff, work)` runs the App's rounds (no evaluation) over the
    established sites' slice (simulations.compare.run_cutoff); the final shared encoder is read from
    `work / "federated" / global_encoder.pt`.
    """
    started = time.monotonic()
    settings = Settings.from_config(config)
    data, model_args = settings.data, settings.model
    stat_models = tuple(settings.site.stat_models.split())
    by_site = _sites(frame, sorted(frame["site"].unique()))
    groups = deal_folds(list(by_site), folds, settings.federation.seed)
    season = season_length(frame.attrs["freq"])
    torch.set_num_threads(1)
    pretrained, _ = initial_model(settings)
    pretrained.eval()
    rows, guards, cutoff_rows, priors = [], [], [], []
    cases: dict[tuple[str, int], dict[int, ShortHistoryCase]] = {}  # (site, cutoff): alike in every fold
    for index, cutoff in enumerate(cutoffs):
        for fold, new in enumerate(groups):
            t0 = time.monotonic()
            work = out / "work" / f"c{index}-f{fold}"
            established = [s for s in by_site if s not in new]
            est_frame = frame[frame["site"].isin(established)].reset_index(drop=True)
            est_frame.attrs = dict(frame.attrs)
            run_arms = ["federated"] + ([SCRATCH] if SCRATCH in arms else [])
            encoders, phases = {}, {}
            for arm in run_arms:
                federated({**config, "final-evaluate": False} | ({"init": "random"} if arm == SCRATCH else {}),
                          est_frame, cutoff, work / arm)
                encoders[arm] = load_global(work / arm / "federated")
            phases["rounds"] = time.monotonic() - t0
            before = {s: _slice(by_site[s], cutoff, history, 0) for s in established}
            shared = shared_model(encoders["federated"], model_args)
            for s, f in before.items():
                if (s, index) not in cases:
                    cases[s, index] = {h: short_history_case(f, model_args, h, data.val_size, data.stride, season,
                                                             stat_models) for h in new_histories}
            evidence = prior({s: cases[s, index] for s in established}, shared, settings.site.guard_margin)
            phases["prior"] = time.monotonic() - t0 - sum(phases.values())
            priors.append({"cutoff": str(cutoff), "fold": fold,
                           "prior": {str(h): p.to_dict() for h, p in evidence.items()}})
            splits = {s: make_splits(f, model_args.lookback, model_args.horizon, data.val_size, 0, data.stride,
                                     covariates=model_args.futr_exog) for s, f in before.items()}
            models = {"federated_shared": shared, "pretrained_zero_shot": pretrained,
                      "pooled_oracle": pooled_model(pretrained, splits, settings)}
            if SCRATCH in encoders:
                models["federated_scratch_shared"] = shared_model(encoders[SCRATCH], model_args)
            phases["pooled"] = time.monotonic() - t0 - sum(phases.values())
            for site in new:
                for h in new_histories:
                    site_rows, guard = new_site_rows(site, by_site[site], cutoff, h, models, settings,
                                                     evidence[h], stat_models)
                    rows += [{**r, "cutoff": str(cutoff), "fold": fold} for r in site_rows]
                    guards.append({**guard, "cutoff": str(cutoff), "fold": fold})
            phases["new_sites"] = time.monotonic() - t0 - sum(phases.values())
            cutoff_rows.append({"index": index, "cutoff": str(cutoff), "fold": fold, "new_sites": new,
                                "seconds": time.monotonic() - t0, "phase_seconds": phases})
            log(f"cutoff {index}, fold {fold}: {len(new)} new sites, {time.monotonic() - t0:.0f} s ("
                + ", ".join(f"{k} {v:.0f} s" for k, v in phases.items()) + ")")
            summary, reached = summarize(rows, new_histories)
            report = {"config": {**meta, "history": history, "new_histories": new_histories, "folds": folds,
                                 "total_seconds": time.monotonic() - started,
                                 "complete": len(cutoff_rows) == len(cutoffs) * folds},
                      "cutoffs": cutoff_rows, "summary": summary, "time_to_accuracy": reached, "prior": priors,
                      "guard": guards, "per_cutoff": rows}
            write_json(out / "report.json", json_safe(report))
            text = markdown(report)
            write_atomic(out / "report.md", lambda f: f.write(text.encode()))
            if len(new_histories) > 1:
                shown = pd.DataFrame([s for s in summary if s["arm"] in PLOTTED])
                save_figure(plot_skill_vs_history(shown, arm_colors(sorted(shown["arm"].unique()))),
                            out / "skill_vs_history.png")
    return summary
