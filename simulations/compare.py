"""Backtest every way a site could forecast, per site, over several cutoffs and history lengths.

    python -m simulations.compare --data PATH --out DIR [--history 720] [--cutoffs 4] [--rounds 5] ...

For each history length and cutoff, every site keeps `history` points before the cutoff (training
then validation) and is tested on rolling origins in the `test-size` points after it. Arms:
naive and seasonal naive, AutoETS and AutoTheta, local_only, alone_best (the best of those on
validation), pretrained_zero_shot, pretrained_only, pooled_oracle (pools private data), and the
federated arms run through Flower's simulation engine: federated (the product), federated_scratch
(random encoder), fedavg_global (whole model federated) and served (what each site's guard serves);
with --dp-epsilons, federated_dp_eps<ε> and served_dp_eps<ε> (the product under central DP); and
reference_pretrained, an outside pretrained model zero-shot, when its optional group is installed
(simulations.reference). Writes DIR/report.json, per_site.csv, report.md and plots. With
--new-sites, the cold-start comparison instead (simulations.coldstart).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from importlib.metadata import version
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from shared.guard import divide
from shared.scoring import model_scores
from shared.checkpoint import write_json
from shared.config import Settings, parse_overrides
from shared.data import Splits, Windows, check_lengths
from shared.guard import evidence_warning
from shared.metrics import METRICS
from shared.pretrain import initial_model
from shared.results import SiteEvaluation, skill
from shared.sites import plan_run, sites_splits
from shared.model import Forecaster, ModelArgs
from shared.config import TrainArgs
from shared.train import anchor_head, fine_tune, round_seed
from simulations import attack, coldstart, reference
from simulations.report import write_report
from simulations.runner import APP_DIR, RunError, exit_on_sigterm, ray_head, run_app

@dataclass(frozen=True)
class FederatedArm:
    """A run of the App through Flower: its run-config overrides, and which of the arms each site
    scores it reports under which name (None: every arm a site scores, under its own name)."""

    overrides: dict
    reports: dict[str, str] | None


FEDERATED_ARMS = {
    "federated": FederatedArm({}, None),  # the product; the sites also score every alone option and served
    "federated_scratch": FederatedArm({"init": "random"}, {"federated": "federated_scratch"}),
    "fedavg_global": FederatedArm({"exchange": "model"}, {"federated": "fedavg_global"}),
}
IN_PROCESS_ARMS = ("pretrained_zero_shot", "pretrained_only", "pooled_oracle")


def dp_arms(epsilons: list[float], delta: float) -> dict[str, FederatedArm]:
    """The product with central DP, the server calibrating its noise so that the rounds it runs spend
    ε: reported as `federated_dp_eps<ε>` and `served_dp_eps<ε>` (what the guards serve with it)."""
    return {f"federated_dp_eps{e:g}": FederatedArm(
        {"dp": "central", "dp-epsilon": e, "dp-delta": delta},
        {"federated": f"federated_dp_eps{e:g}", "served": f"served_dp_eps{e:g}"}) for e in epsilons}


def log(message: str, started: float) -> None:
    print(f"[{time.monotonic() - started:7.0f} s] {message}", flush=True)


def cutoff_times(frame: pd.DataFrame, history: int, test_size: int, cutoffs: int, spacing: int) -> list[pd.Timestamp]:
    """First test timestamps, latest first: the last fits `test_size` points before the data ends,
    each earlier one `spacing` points before the next; every one leaves `history` points before it."""
    offset = pd.tseries.frequencies.to_offset(frame.attrs["freq"])
    end = frame.groupby("unique_id")["ds"].max().min()
    start = frame.groupby("unique_id")["ds"].min().max()
    times = [end - (test_size - 1 + k * spacing) * offset for k in range(cutoffs)]
    usable = [t for t in times if t - history * offset >= start]
    if not usable:
        raise SystemExit(f"no cutoff leaves {history} points of history before it and {test_size} after")
    return usable


def window_slice(frame: pd.DataFrame, cutoff: pd.Timestamp, history: int, test_size: int) -> pd.DataFrame:
    offset = pd.tseries.frequencies.to_offset(frame.attrs["freq"])
    lo, hi = cutoff - history * offset, cutoff + (test_size - 1) * offset
    part = frame[(frame["ds"] >= lo) & (frame["ds"] <= hi)].reset_index(drop=True)
    part.attrs = dict(frame.attrs)
    return part


def fresh_head(pretrained: Forecaster, train_windows: Windows) -> Forecaster:
    """The pretrained encoder with a fresh head anchored on these windows' best simple forecast."""
    model = Forecaster(pretrained.args)
    model.encoder.load_state_dict(pretrained.encoder.state_dict())
    anchor_head(model, train_windows)
    return model


def _tune_and_score(start: dict[str, torch.Tensor], args: ModelArgs, split: Splits, full: Splits,
                    train: TrainArgs) -> dict:
    """Fine-tune a model from `start` on one site's split and score it (a worker's task)."""
    torch.set_num_threads(1)
    model = Forecaster(args)
    model.load_state_dict(start)
    fine_tune(model, split, train)
    return model_scores(model, full)


def in_process_arms(settings: Settings, full: dict[str, Splits], pretrained, workers: int = 1
                    ) -> dict[str, dict[str, dict]]:
    """pretrained_zero_shot, pretrained_only and pooled_oracle per site: {arm: {site: scores}}, from
    each site's windows `full` (shared.sites.sites_splits).

    The per-site fine-tunes run in `workers` processes while this one fits the pooled model; each
    is seeded by its site, so the scores do not depend on `workers`.
    """
    args, train = settings.model, settings.train
    splits = {name: divide(s)[0] for name, s in full.items()}  # training sees the fitting windows, as at the sites
    names = sorted(full)
    pool = ProcessPoolExecutor(max(1, workers), mp_context=get_context("spawn"))  # spawn: no forked torch state
    try:
        pre = {n: pool.submit(_tune_and_score, fresh_head(pretrained, splits[n].train).state_dict(), args,  # as a
                              splits[n], full[n], replace(train, seed=round_seed(train.seed, n, -1)))  # site starts
               for n in names}
        pooled = Splits(*(Windows.concat([getattr(splits[n], part) for n in names], args.lookback, args.horizon)
                          for part in ("train", "val", "test")))
        oracle = fresh_head(pretrained, pooled.train)
        fine_tune(oracle, pooled, train)  # one model on every site's data: what pooling would give
        post = {n: pool.submit(_tune_and_score, oracle.state_dict(), args, splits[n], full[n],
                               replace(train, seed=round_seed(train.seed, n, -2))) for n in names}
        return {"pretrained_zero_shot": {n: model_scores(pretrained, full[n]) for n in names},
                "pretrained_only": {n: f.result() for n, f in pre.items()},
                "pooled_oracle": {n: f.result() for n, f in post.items()}}
    finally:
        pool.shutdown(cancel_futures=True)


def federated_rows(out_dir: Path, evaluated: bool = True) -> tuple[dict[str, SiteEvaluation], list[dict]]:
    """(each site's last evaluation, train rows) of a finished run; RunError if it left none. A train reply
    the server left out (failed or rejected) is kept in its row; a site that failed to evaluate is an error."""
    path = out_dir / "per_site.json"
    if not path.exists():  # flwr run can end with code 0 when the simulation stops early
        raise RunError(f"{out_dir}: the run ended without per-site results; see {out_dir / 'flower' / 'flwr-run.log'}")
    rows = json.loads(path.read_text())
    failed = [r["site"] for r in rows if "error" in r and r["phase"] == "evaluate"]
    if failed:
        raise RuntimeError(f"{out_dir}: sites failed to evaluate: {sorted(set(failed))}")
    last = {r["site"]: SiteEvaluation.from_row(r) for r in rows if r["phase"] == "evaluate"}
    if evaluated and not last:  # it stopped before evaluating (too few usable replies), yet flwr run ended with 0
        raise RunError(f"{out_dir}: the run ended before any site evaluated; see {out_dir / 'flower' / 'flwr-run.log'}")
    return last, [r for r in rows if r["phase"] == "train"]  # a train reply left out carries its "error"


def run_cutoff(settings_config: dict, part: pd.DataFrame, work: Path, arms: dict[str, FederatedArm | None],
               started: float, stream, app: tuple[Path | None, dict] = (None, {})
               ) -> tuple[list[dict], list[dict], list[dict], dict[str, float]]:
    """Every arm on one data slice: (result rows, guard rows, round rows, wall seconds per arm).

    `arms`: the federated arms, and None for the in-process ones. `app`: the App the federated arms run
    and run-config keys of its own (simulations.attack's copy; None: the product App).
    """
    work.mkdir(parents=True, exist_ok=True)
    data_path = work / "data.parquet"
    part.to_parquet(data_path)
    n_sites = part["site"].nunique()
    base = {**settings_config, "data-path": str(data_path),
            "alone-dir": settings_config.get("alone-dir") or str(work / "alone")}
    settings = Settings.from_config(base)
    results, guards, rounds, seconds = [], [], [], {}
    for arm, spec in ((a, s) for a, s in arms.items() if s is not None):
        t0 = time.monotonic()
        out = work / arm
        run_app({**base, **spec.overrides, "out-dir": str(out), **app[1]}, n_sites, out / "flower", label=f"  {arm}",
                verbose=stream is not None, app_dir=app[0])
        last, train_rows = federated_rows(out, evaluated=settings.federation.final_evaluate)
        seconds[arm] = time.monotonic() - t0
        log(f"  {arm}: {seconds[arm]:.0f} s", started)
        rounds += [{"arm": arm, "round": r["round"], "site": r["site"], "val_mae": r.get("val-mae"),
                    "update_norm": r.get("update-norm"), **({"error": r["error"]} if "error" in r else {})}
                   for r in train_rows]
        for site, ev in last.items():
            for name, label in (spec.reports or {a: a for a in ev.arms}).items():
                results.append({"site": site, "arm": label, **ev.arms[name].test})
            if spec.reports is None:
                guards.append({"site": site, "alone_choice": ev.alone_choice, **ev.guard.to_dict()})
    local = [a for a in IN_PROCESS_ARMS if a in arms]
    if local or reference.ARM in arms:
        torch.set_num_threads(1)
        full = sites_splits(part, settings.data, settings.model)
    if local:
        t0 = time.monotonic()
        pretrained, _ = initial_model(settings)
        workers = min(len(os.sched_getaffinity(0)), len(full))
        for arm, per_site in in_process_arms(settings, full, pretrained, workers).items():
            if arm in local:
                results += [{"site": s, "arm": arm, **{m: v["test"][m] for m in METRICS}} for s, v in per_site.items()]
        seconds["in_process"] = time.monotonic() - t0
        log(f"  pretrained_zero_shot, pretrained_only, pooled_oracle: {seconds['in_process']:.0f} s", started)
    if reference.ARM in arms:
        t0 = time.monotonic()
        per_site = reference.reference_scores(full, settings.model.horizon)
        results += [{"site": s, "arm": reference.ARM, **{m: v["test"][m] for m in METRICS}} for s, v in per_site.items()]
        seconds[reference.ARM] = time.monotonic() - t0
        log(f"  {reference.ARM}: {seconds[reference.ARM]:.0f} s", started)
    return results, guards, rounds, seconds


def _with_attrs(frame: pd.DataFrame, attrs: dict) -> pd.DataFrame:
    frame.attrs = dict(attrs)
    return frame


def summarize(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Skills per cutoff, then per-site averages over cutoffs and the per-arm summary."""
    frame = pd.DataFrame(rows)
    key = ["history", "cutoff", "site"]
    alone = frame[frame["arm"] == "alone_best"].set_index(key)["mae"]
    local = frame[frame["arm"] == "local_only"].set_index(key)["mae"]
    index = pd.MultiIndex.from_frame(frame[key])
    skills = np.vectorize(skill, otypes=[float])
    frame["skill_vs_alone"] = skills(frame["mae"].to_numpy(), alone.reindex(index).to_numpy())
    frame["gain_vs_local"] = skills(frame["mae"].to_numpy(), local.reindex(index).to_numpy())
    values = list(METRICS) + ["skill_vs_alone", "gain_vs_local"]
    per_site = frame.groupby(["site", "arm", "history"], sort=True)[values].mean().reset_index()
    per_site["cutoffs"] = frame.groupby(["site", "arm", "history"], sort=True).size().to_numpy()
    summary = []
    for (arm, history), g in per_site.groupby(["arm", "history"], sort=True):
        values = g["skill_vs_alone"].to_numpy()
        defined = values[np.isfinite(values)]  # undefined where alone_best's test MAE is 0
        if not len(defined):
            defined = np.array([np.nan])
        summary.append({"arm": arm, "history": int(history), "median_skill": float(np.median(defined)),
                        "mean_skill": float(defined.mean()), "share_better": float((values > 0).mean()),
                        "share_worse": float((values < 0).mean()), "worst_skill": float(defined.min()),
                        "sites": int(len(g)), "skill_undefined": int((~np.isfinite(values)).sum())})
    return per_site.to_dict("records"), summary


def load_cutoff(work: Path, fingerprint: str) -> dict | None:
    """A finished cutoff's results from an earlier attempt with the same settings, if any."""
    path = work / "cutoff.json"
    if not path.exists():
        return None
    done = json.loads(path.read_text())
    if done["fingerprint"] != fingerprint:
        raise SystemExit(f"{path} was made with other settings: use another --out, or delete it")
    return done


def write_all(args, out: Path, freq: str, histories: list[int], spacing: int, arms: list[str], config: dict,
              wall: dict, started: float, planned: int, cutoff_rows: list, rows: list, guards: list,
              rounds: list) -> list[dict]:
    """Summarise what is measured so far and write the report; returns the summary."""
    per_site, summary = summarize(rows)
    packages = {p: version(p) for p in ("flwr", "torch", "pandas", "numpy", "statsforecast")}
    report = {
        "config": {"data": args.data or "built-in demo sites", "freq": freq, "histories": histories,
                   "cutoffs": args.cutoffs, "spacing": spacing, "rounds": args.rounds, "seed": args.seed,
                   "max_sites": args.max_sites, "arms": arms, "run_config": config, "packages": packages,
                   "python": platform.python_version(), "wall_seconds": wall,
                   "total_seconds": time.monotonic() - started, "command": " ".join(sys.argv),
                   "complete": len(cutoff_rows) == planned},
        "cutoffs": cutoff_rows, "per_site": per_site, "per_cutoff": rows, "summary": summary,
        "guard": guards, "rounds": rounds,
    }
    write_report(report, out)
    return summary


def read_setup(args: argparse.Namespace) -> tuple[pd.DataFrame, dict, dict]:
    """(sites' data, the frequency's defaults, the run config of every arm) of the command's options."""
    chosen = {"lookback": args.lookback, "horizon": args.horizon, "val-size": args.val_size,
              "test-size": args.test_size, "stride": args.stride}
    chosen = {k: v for k, v in chosen.items() if v is not None} | {
        "num-server-rounds": args.rounds, "seed": args.seed, "cache-dir": str(APP_DIR / ".cache")}
    overrides = parse_overrides(args.set)
    plan = plan_run(args.data, args.site_column, overrides, chosen=chosen,
                    fixed={"site-column": "site"}, whole_series=False)  # each cutoff's slice is checked
    frame = plan.frame
    if args.max_sites:
        keep = plan.sites[: args.max_sites]
        frame = _with_attrs(frame[frame["site"].isin(keep)].reset_index(drop=True), frame.attrs)
    config = {"min-train-nodes": frame["site"].nunique()} | plan.config
    return frame, plan.defaults, config


def cold_start(args: argparse.Namespace, frame: pd.DataFrame, config: dict, histories: list[int], spacing: int,
               started: float) -> int:
    """The cold-start comparison (simulations.coldstart) of the command's options."""
    if not 0 < args.new_sites <= 0.5 or len(histories) != 1 or not args.new_history or args.resume or args.attack:
        raise SystemExit("--new-sites takes a fraction in (0, 0.5], one --history (the established sites'), a "
                         "--new-history list, and no --resume or --attack")
    new_histories = sorted(int(h) for h in args.new_history.split(","))
    lookback, test_size = int(config["lookback"]), int(config["test-size"])
    if new_histories[0] < lookback or new_histories[-1] + int(config["val-size"]) > histories[0]:
        raise SystemExit(f"--new-history {new_histories}: each must be at least the lookback ({lookback}), and "
                         f"each plus val-size ({config['val-size']}) at most --history ({histories[0]})")
    arms = ["federated"] if args.arms == "all" else args.arms.split(",")
    if unknown := sorted(set(arms) - {"federated", coldstart.SCRATCH}):
        raise SystemExit(f"--arms with --new-sites: unknown {', '.join(unknown)}; known: federated, {coldstart.SCRATCH}")
    out = Path(args.out).resolve()
    history = histories[0]
    cutoffs = cutoff_times(frame, history, test_size, args.cutoffs, spacing)
    stream = sys.stdout if args.verbose else None

    def federated(run_config: dict, established: pd.DataFrame, cutoff: pd.Timestamp, work: Path) -> None:
        part = window_slice(established, cutoff, history, test_size)
        run_cutoff(run_config | {"min-train-nodes": part["site"].nunique()}, part, work,
                   {"federated": FEDERATED_ARMS["federated"]}, started, stream)

    meta = {"data": args.data or "built-in demo sites", "freq": frame.attrs["freq"], "cutoffs": args.cutoffs,
            "spacing": spacing, "rounds": args.rounds, "seed": args.seed, "new_sites": args.new_sites,
            "run_config": config, "command": " ".join(sys.argv), "python": platform.python_version(),
            "packages": {p: version(p) for p in ("flwr", "torch", "pandas", "numpy", "statsforecast")}}
    try:
        with ray_head():
            summary = coldstart.run(config, frame, cutoffs, history, new_histories, round(1 / args.new_sites), arms,
                                    out, federated, lambda message: log(message, started), meta)
    except RunError as exc:
        raise SystemExit(f"error: {exc}") from None
    for line in sorted(summary, key=lambda r: (r["history"], -r["median_skill"])):
        print(f"new sites, history {line['history']:>5}  {line['arm']:<26} median skill over alone_best "
              f"{line['median_skill']:+7.1%}  worse by >5 % {line['share_worse_5pct']:5.0%}")
    log(f"report: {out / 'report.md'}", started)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="", help="long-format CSV/Parquet (default: built-in demo sites)")
    parser.add_argument("--out", required=True, help="report folder (must be empty or new)")
    parser.add_argument("--site-column", default="site")
    parser.add_argument("--history", default="", help="points before each cutoff a site may use; a list "
                        "(e.g. 240,720) gives a curve (default: lookback + 4 validation spans)")
    parser.add_argument("--val-size", type=int, help="validation points at the end of the history")
    parser.add_argument("--lookback", type=int)
    parser.add_argument("--horizon", type=int)
    parser.add_argument("--test-size", type=int, help="points after each cutoff where test origins lie")
    parser.add_argument("--stride", type=int, help="points between validation/test origins")
    parser.add_argument("--cutoffs", type=int, default=3, help="backtest cutoffs (each a full repetition)")
    parser.add_argument("--spacing", type=int, help="points between cutoffs (default: test-size)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-sites", type=int, help="use the first N sites (sorted by name)")
    parser.add_argument("--arms", default="all", help="comma-separated subset of the learned arms, or all")
    parser.add_argument("--dp-epsilons", default="", help="comma-separated ε values: a federated_dp_eps<ε> and "
                        "served_dp_eps<ε> arm each (central DP, noise calibrated by the server to spend ε over the rounds it runs)")
    parser.add_argument("--dp-delta", type=float, default=1e-5, help="δ of the DP arms (default 1e-5)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any run-config key")
    parser.add_argument("--verbose", action="store_true", help="stream Flower's logs")
    parser.add_argument("--resume", action="store_true", help="reuse the finished cutoffs of an earlier run "
                        "into the same --out (same settings), redo the rest")
    parser.add_argument("--new-sites", type=float, default=0.0, metavar="FRACTION", help="cold start: this share "
                        "of the sites is new in each fold (rotating: every site is new once per cutoff); the "
                        "others keep --history (simulations.coldstart)")
    parser.add_argument("--new-history", default="", help="cold start: comma-separated points of history a new "
                        "site keeps before the cutoff (each at least the lookback)")
    parser.add_argument("--attack", default="", metavar="times-K", help="benchmarks only: the first site by name "
                        "sends K times its honest encoder update in every round (simulations.attack)")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    started = time.monotonic()
    out = Path(args.out).resolve()
    if out.exists() and any(out.iterdir()) and not args.resume:
        raise SystemExit(f"{out} is not empty (add --resume to continue an earlier run there)")

    try:
        frame, defaults, config = read_setup(args)
    except ValueError as exc:  # bad data (DataError) or run config: the message names the file, key or series
        raise SystemExit(f"error: {exc}") from None
    freq = frame.attrs["freq"]
    histories = [int(h) for h in args.history.split(",")] if args.history else \
        [int(config["lookback"]) + 4 * int(config["val-size"])]
    spacing = args.spacing or int(config["test-size"])
    epsilons = [float(e) for e in args.dp_epsilons.split(",")] if args.dp_epsilons else []
    if args.new_sites:
        return cold_start(args, frame, config, histories, spacing, started)
    known: dict[str, FederatedArm | None] = {**FEDERATED_ARMS, **{a: None for a in IN_PROCESS_ARMS},
                                             reference.ARM: None}
    chosen_arms = list(known) if args.arms == "all" else args.arms.split(",")
    if reference.ARM in chosen_arms and not reference.available():
        if args.arms != "all":
            raise SystemExit(f"--arms {reference.ARM} needs the optional fracast package: {reference.INSTALL}")
        chosen_arms.remove(reference.ARM)
        log(f"{reference.ARM} left out: {reference.INSTALL} adds it", started)
    if unknown := sorted(set(chosen_arms) - set(known)):
        raise SystemExit(f"--arms: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    arm_specs = {a: known[a] for a in chosen_arms} | dp_arms(epsilons, args.dp_delta)
    arms = list(arm_specs)
    app: tuple[Path | None, dict] = (None, {})
    if args.attack:
        try:
            app = (attack.app_copy(APP_DIR, out / "attack-app"), {attack.SCALE: attack.parse(args.attack),
                                                                  attack.PARTITION: 0})
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from None
        log(f"attack: {sorted(frame['site'].unique())[0]} sends {args.attack} its honest update in every round",
            started)
    log(f"{args.data or 'built-in demo sites'}: frequency {freq}, {frame['site'].nunique()} sites; "
        f"histories {histories}; settings " + ", ".join(f"{k}={config[k]}" for k in defaults), started)
    if warning := evidence_warning(int(config["val-size"]), int(config["horizon"]), int(config["stride"])):
        log(f"warning: {warning}", started)

    rows, guards, rounds, cutoff_rows = [], [], [], []
    wall: dict[str, float] = {}
    fingerprint = json.dumps([args.data, args.max_sites, {a: spec and spec.overrides for a, spec in arm_specs.items()},
                              config, args.attack], sort_keys=True, default=str)
    plan = [(history, index, cutoff) for history in histories
            for index, cutoff in enumerate(cutoff_times(frame, history, int(config["test-size"]), args.cutoffs, spacing))]
    for history, index, cutoff in plan:  # every slice's series long enough, before anything starts
        try:
            check_lengths(window_slice(frame, cutoff, history, int(config["test-size"])), int(config["lookback"]),
                          int(config["horizon"]), int(config["val-size"]), int(config["test-size"]),
                          f"{args.data or 'built-in demo sites'} (history {history}, cutoff {index})")
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from None
    try:
        with ray_head():  # every simulation run of the comparison joins one Ray head
            for history, index, cutoff in plan:
                stamp = {"history": history, "cutoff": str(cutoff)}
                work = out / "work" / f"h{history}-c{index}"
                done = load_cutoff(work, fingerprint) if args.resume else None
                if done is None:
                    log(f"history {history}, cutoff {index}: first test point {cutoff}", started)
                    part = window_slice(frame, cutoff, history, int(config["test-size"]))
                    shutil.rmtree(work, ignore_errors=True)  # an unfinished earlier attempt: start it afresh
                    result, guard, round_rows, seconds = run_cutoff(config, part, work, arm_specs, started,
                                                                    sys.stdout if args.verbose else None, app)
                    done = {"fingerprint": fingerprint, "sites": int(part["site"].nunique()), "results": result,
                            "guard": guard, "rounds": round_rows, "seconds": seconds}
                    write_json(work / "cutoff.json", done)
                else:
                    log(f"history {history}, cutoff {index}: reusing {work / 'cutoff.json'}", started)
                cutoff_rows.append({"index": index, **stamp, "sites": done["sites"]})
                rows += [{**r, **stamp} for r in done["results"]]
                guards += [{**g, **stamp} for g in done["guard"]]
                rounds += [{**r, **stamp} for r in done["rounds"]]
                for arm, sec in done["seconds"].items():
                    wall[arm] = wall.get(arm, 0.0) + sec
                summary = write_all(args, out, freq, histories, spacing, arms, config, wall, started, len(plan),
                                    cutoff_rows, rows, guards, rounds)  # after every cutoff: progress survives a stop
    except RunError as exc:  # a Flower run failed; the cutoffs finished before it are kept
        raise SystemExit(f"error: {exc}\n(--resume reuses the cutoffs already finished)") from None

    for line in sorted(summary, key=lambda r: (r["history"], -r["median_skill"])):
        print(f"history {line['history']:>5}  {line['arm']:<22} median skill {line['median_skill']:+7.1%}  "
              f"better {line['share_better']:5.0%}  worse {line['share_worse']:5.0%}  worst {line['worst_skill']:+7.1%}")
    log(f"report: {out / 'report.md'}", started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
