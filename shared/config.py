"""Typed settings, read once at the boundary from a flat kebab-case mapping (Flower's run config)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from shared.model import ModelArgs


@dataclass(frozen=True)
class TrainArgs:
    """Optimisation settings shared by every fit."""

    lr: float = 3e-3  # head learning rate (AdamW)
    encoder_lr_ratio: float = 0.3  # the shared encoder moves slower than the private head
    batch_size: int = 64  # ~27 ms a step on one CPU thread with the default model
    max_epochs: int = 50  # upper bound; early stopping usually ends a fit sooner
    patience: int = 5  # epochs without validation improvement before stopping
    steps_per_epoch: int = 25  # an "epoch" is this many batches (cycling through the windows): small sites
    # get as many steps as big ones before early stopping can end a fit
    weight_decay: float = 1e-4  # AdamW
    seed: int = 0  # shuffling and dropout; sites derive theirs from it, the site and the round
    local_epochs: int = 0  # a federated round's local update: 0 = early-stopped like any other fit (no
    # update when no epoch beats the start); N = the head early-stopped, then exactly N epochs of the
    # encoder alone, kept as they end (FedRep's body update)


@dataclass(frozen=True)
class DataArgs:
    """How a site's series are read and cut into windows."""

    data_path: str = ""  # long-format CSV/Parquet; "" = built-in demo sites
    site_column: str = "site"  # column grouping series into sites; absent = one site per series
    freq: str = ""  # pandas alias; "" = inferred
    demo_sites: int = 8  # sites of the built-in demo data
    demo_length: int = 24 * 35  # five weeks hourly: two of training history, two validation, one test
    demo_seed: int = 0  # the demo data stays the same when the training seed changes
    val_size: int = 336  # validation points at the end of the history: two weeks hourly, 14 daily
    # origins, half steering training and half judging (client.site.divide)
    test_size: int = 168  # test points after validation, where rolling test origins lie
    stride: int = 24  # points between validation/test origins (daily for hourly data)


@dataclass(frozen=True)
class FederationArgs:
    """Rounds, sampling and where the server keeps its files."""

    num_server_rounds: int = 4  # rounds of train (+ evaluate) messages
    fraction_train: float = 1.0  # share of connected sites sampled each round
    min_train_nodes: int = 2  # a round needs answers from at least this many sites (others may drop out)
    wait_for_nodes: int = 0  # sites that must be connected before the first round (0 = min-train-nodes)
    round_timeout: float = 3600.0  # seconds a round waits for answers; the silent sites are reported missing
    reply_poll: float = 0.2  # seconds between the server's pulls for replies (server.grid)
    resume: bool = False  # continue the run checkpointed in out-dir from its last completed round
    evaluate_every: int = 0  # also evaluate every k rounds (0: only after the last; costs a fine-tune)
    final_evaluate: bool = True  # evaluate after the last round; false: the run only trains (a cold-start
    # comparison scores its new sites itself)
    seed: int = 0  # seeds sampling, pretraining and every site's training
    pretrained_path: str = ""  # encoder checkpoint; "" = the one shipped for the run's model (shared/checkpoints),
    # else pretrain now on the corpus and cache it
    cache_dir: str = ".cache"  # where a pretrained encoder is cached, keyed by its settings
    corpus_series: int = 1000  # KernelSynth series in the pretraining corpus
    corpus_length: int = 512  # points per corpus series
    corpus: str = "kernelsynth"  # pretraining corpus: "kernelsynth" (synthetic only) or "mixed" (real public
    # series, TSMixup and KernelSynth: shared.corpus; needs the corpus dependency group)
    pretrain_epochs: int = 40  # of steps-per-epoch batches each; about a minute on one core
    exchange: str = "encoder"  # what travels: "encoder" (private heads) or "model" (fedavg_global arm)
    init: str = "pretrained"  # starting encoder: "pretrained" (pretrained-path, else the shipped checkpoint for
    # the model, else pretrained now), "pretrain" (pretrained now on `corpus`, cached) or "random" (federated_scratch)
    out_dir: str = "runs/latest"  # global checkpoints and per-site results
    state_dir: str = ""  # simulation: each site's private state under here ("" = OUT_DIR/sites)
    aggregation: str = "fedavg"  # "fedavg" (weighted by training windows), "median" or "trimmed-mean"
    # (coordinate-wise, equal weights: a few outlying sites cannot move them far; shared.updates)
    trim_fraction: float = 0.2  # trimmed-mean: share of sites cut at each end per coordinate (1 of 5, as
    # Flower's FedTrimmedAvg); fewer than 1 / trim-fraction sites are averaged untrimmed
    clip_update_norm: float = 0.0  # each site's update scaled down to this L2 norm before aggregation; 0 = off
    max_update_norm: float = 0.0  # a site's update (L2, encoder sent to encoder returned) above this is
    # rejected; 0 = no bound (an honest norm depends on model size, lr and local epochs, so none fits all)
    max_train_windows: int = 0  # a site claiming more training windows is rejected; 0 = no cap (the server
    # cannot know site sizes in advance); a site's later claims are capped at its first accepted one


@dataclass(frozen=True)
class SiteArgs:
    """What a site computes besides its share of the federation."""

    stat_models: str = "auto_ets auto_theta"  # statistical alone options (statsforecast); "" = none
    guard_margin: float = 0.02  # serve federated only if its validation MAE is this much below alone_best's
    alone_dir: str = ""  # simulation: where sites keep their alone options ("" = each site's state folder)
    prior_histories: str = ""  # history lengths (points, space-separated) at which a site, when it evaluates,
    # measures the shared forecast against the alone option it would pick with that little history, on its
    # validation windows, and reports one win or loss per length: the prior of the new-site guard ("" = none)

    @property
    def histories(self) -> tuple[int, ...]:
        return tuple(int(h) for h in self.prior_histories.replace(",", " ").split())


@dataclass(frozen=True)
class PrivacyArgs:
    """Options for privacy-constrained pilots; all off by default (docs/privacy.md)."""

    secagg: bool = False  # aggregate encoder updates with SecAgg+: the server learns only their sum
    secagg_shares: int = 3  # SecAgg+ shares per site's secret
    secagg_threshold: int = 2  # shares needed to reconstruct; more sites than this may not drop out
    dp: str = "none"  # "none", "central" (noise on the aggregate) or "local" (each site noises its update)
    dp_clip: float = 1.0  # L2 bound on one site's encoder update per round
    dp_noise: float = 1.0  # noise multiplier: Gaussian std = dp-noise x dp-clip
    dp_epsilon: float = 0.0  # central DP: the server sets dp-noise so that num-server-rounds spend this
    # epsilon at dp-delta, and makes it the budget (the rounds run are the ones calibrated for); 0 = off
    dp_delta: float = 1e-5  # the delta of the reported (epsilon, delta)
    dp_epsilon_budget: float = 0.0  # stop before a round would spend more than this epsilon; 0 = no budget
    sign_key: str = ""  # coordinator: Ed25519 private key signing every encoder it sends
    verify_key: str = ""  # sites: the coordinator's public key; unsigned or tampered encoders are refused
    roster: str = ""  # coordinator: the organizations' public keys; only replies signed by a listed site count
    reports: str = "full"  # "minimal": a site sends only what aggregation needs


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def read_args(cls, config: Mapping[str, Any], **overrides):
    """Build dataclass `cls` from the kebab-case keys of `config` that name its fields.

    Values are cast to each field's default type, so "0.01" and 0.01 both work; `lags` and
    `futr_exog` are read from a space- or comma-separated string.
    """
    values = {}
    for f in fields(cls):
        key = _kebab(f.name)
        if key not in config:
            continue
        raw = config[key]
        try:
            if f.name == "lags":
                values[f.name] = tuple(int(v) for v in str(raw).replace(",", " ").split())
            elif f.name == "futr_exog":
                values[f.name] = covariates(config)
            elif isinstance(f.default, bool):
                values[f.name] = raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes")
            else:
                values[f.name] = type(f.default)(raw)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"config key '{key}': cannot read {raw!r} as {type(f.default).__name__}") from exc
    return cls(**(values | overrides))


def covariates(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The known-ahead covariate columns a run config names (`futr-exog`, space- or comma-separated)."""
    return tuple(str(config.get("futr-exog", "")).replace(",", " ").split())


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """`KEY=VALUE` strings from a command line as a run-config mapping."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def to_config(obj) -> dict[str, Any]:
    """Flat kebab-case mapping of a settings dataclass (the inverse of `read_args`)."""
    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        out[_kebab(f.name)] = " ".join(map(str, value)) if isinstance(value, tuple) else value
    return out


@dataclass(frozen=True)
class Settings:
    """Everything one run needs, from a run config."""

    model: ModelArgs
    train: TrainArgs
    data: DataArgs
    federation: FederationArgs
    site: SiteArgs
    privacy: PrivacyArgs = PrivacyArgs()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        return cls(**{name: read_args(part, config) for name, part in SECTIONS.items()})

    @classmethod
    def checked(cls, config: Mapping[str, Any]) -> Settings:
        """`from_config`, refusing keys no setting reads: a typo would otherwise be ignored here and
        fail inside Flower (whose run config takes only the App's keys)."""
        known = {_kebab(f.name) for part in SECTIONS.values() for f in fields(part)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown run-config key{'s' * (len(unknown) > 1)} {', '.join(unknown)} (the keys are "
                             "those of [tool.flwr.app.config] in pyproject.toml, listed in docs/configuration.md)")
        return cls.from_config(config)


SECTIONS = {"model": ModelArgs, "train": TrainArgs, "data": DataArgs, "federation": FederationArgs, "site": SiteArgs,
            "privacy": PrivacyArgs}  # Settings field -> the dataclass read into it


def frequency_defaults(seasons: list[int]) -> dict[str, Any]:
    """Window and model settings that suit data with these natural seasons (shortest first).

    The lookback is the longest season (8 short seasons when there is no longer one), the horizon one short
    season (two when it is under a day's 24 points), one patch is one short season, and validation
    spans two lookbacks and test one, with an origin every short season.
    """
    short, longest = seasons[0], seasons[-1]
    lookback = longest if longest >= 4 * short else 8 * short
    horizon = short if short >= 24 else 2 * short
    patch = short if short <= lookback // 4 else max(1, lookback // 8)
    return {
        "lookback": lookback, "horizon": horizon, "lags": " ".join(map(str, [1, *seasons])),
        "patch-len": patch, "patch-stride": max(1, patch // 2) if patch >= 12 else patch,
        "val-size": 2 * lookback, "test-size": lookback, "stride": short,
    }
