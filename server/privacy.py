"""Differential privacy on the encoder updates, and the (ε, δ) they spend (docs/privacy.md).

A site's update is the encoder it sends minus the one it received; the unit protected is a site's
whole update in a round. "central": the server clips every update to L2 norm `dp-clip`, averages
them with equal weight over the `num_sites` expected (McMahan et al. 2018, fixed denominator) and
adds Gaussian noise of std dp-noise x dp-clip / num_sites. "local": each site clips its update and
adds noise of std dp-noise x dp-clip itself (client.privacy); the server only keeps the account.

Either way a round is one Gaussian mechanism with noise multiplier dp-noise, and ε at dp-delta is
computed by Flower's RdpAccountant (Google's dp-accounting: the Gaussian mechanism's Rényi DP,
Mironov 2017, composed over rounds, converted as in Canonne et al. 2020), for neighbouring
federations that differ by one site's data, with no credit for sampling. For local DP that is each
site's own guarantee over the rounds it was asked to train.

Flower's DifferentialPrivacyServerSideFixedClipping is not used: its noise is sized for an
equal-weight mean but lands on EncoderFedAvg's mean weighted by training windows (a large site would
get less protection than stated), one failed site drops the whole round, its clipping fails on an
unchanged encoder (shared.privacy), and its accountant refuses a FedAvg that overrides aggregate_train.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import (GaussianPrivacyEvent, Grid, NeighboringRelation, PrivacyConfig, RdpAccountant,
                            SamplingMethod)
from flwr.serverapp.strategy import Strategy

from shared.config import PrivacyArgs
from shared.privacy import clip, epsilon_after, l2_norm, noise_for_epsilon

MODES = ("none", "central", "local")


def _accountant(delta: float, num_sites: int) -> RdpAccountant:
    return RdpAccountant(PrivacyConfig(  # needs the flwr[dp] extra (dp-accounting)
        target_delta=delta, population_size=num_sites, neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION))


def calibrated(privacy: PrivacyArgs, rounds: int) -> PrivacyArgs:
    """`privacy` with dp-epsilon turned into dp-noise and the budget, for a run of `rounds` training rounds.

    With dp-epsilon > 0 (central DP only), dp-noise becomes the smallest noise multiplier with which
    the `rounds` rounds spend at most dp-epsilon at dp-delta (shared.privacy.noise_for_epsilon), and
    dp-epsilon-budget becomes dp-epsilon. Setting dp-noise or dp-epsilon-budget too is an error.
    """
    if privacy.dp_epsilon == 0:
        return privacy
    if privacy.dp_epsilon < 0:
        raise ValueError("dp-epsilon must be positive, or 0 to set dp-noise by hand")
    if privacy.dp != "central":
        raise ValueError(f"dp-epsilon calibrates the server's noise and needs dp = 'central', not {privacy.dp!r}")
    if privacy.dp_noise != PrivacyArgs.dp_noise:
        raise ValueError(f"dp-epsilon = {privacy.dp_epsilon:g} and dp-noise = {privacy.dp_noise:g} both set the "
                         "noise: set one of them")
    if privacy.dp_epsilon_budget not in (0, privacy.dp_epsilon):
        raise ValueError(f"dp-epsilon = {privacy.dp_epsilon:g} is the budget; dp-epsilon-budget = "
                         f"{privacy.dp_epsilon_budget:g} contradicts it: leave dp-epsilon-budget at 0")
    noise = noise_for_epsilon(privacy.dp_epsilon, rounds, privacy.dp_delta)
    log(INFO, "DP: noise multiplier %.4g spends ε = %g at δ = %g over %d rounds", noise, privacy.dp_epsilon,
        privacy.dp_delta, rounds)
    return replace(privacy, dp_noise=noise, dp_epsilon_budget=privacy.dp_epsilon)


def wrap_strategy(strategy: Strategy, privacy: PrivacyArgs, num_sites: int) -> Strategy:
    """`strategy` itself for dp "none", else a `DpStrategy` around it."""
    if privacy.dp not in MODES:
        raise ValueError(f"dp must be one of {', '.join(MODES)}, not {privacy.dp!r}")
    return strategy if privacy.dp == "none" else DpStrategy(strategy, privacy, num_sites)


class DpStrategy(Strategy):
    """A FedAvg-family strategy with DP encoder updates, an ε account and an ε budget.

    `epsilon_by_round[r]` is ε (at dp-delta) spent up to and including round r: for central DP
    once the round's noisy aggregate is released, for local DP once its train messages are sent.
    With a budget (dp-epsilon-budget > 0), a round that would take ε over it sends no train
    messages and returns the encoder unchanged, and so does every later one; `stopped_before` is
    its number. Evaluation goes on as scheduled, on the last encoder released.

    Args:
        strategy: the strategy doing sampling, validation, per-site logs and metrics. For central DP its
            own average of the encoders is replaced by the clipped, noisy equal-weight mean of the
            replies it accepted (its `accepted`).
        privacy: the dp-* settings.
        num_sites: sites taking part in a round (the mean's denominator; the accountant's population).
    """

    def __init__(self, strategy: Strategy, privacy: PrivacyArgs, num_sites: int):
        if privacy.dp not in ("central", "local"):
            raise ValueError(f"DpStrategy needs dp 'central' or 'local', not {privacy.dp!r}")
        if privacy.dp_clip <= 0 or privacy.dp_noise <= 0:
            raise ValueError("dp-clip and dp-noise must be positive")
        if privacy.dp_epsilon_budget < 0:
            raise ValueError("dp-epsilon-budget must be positive, or 0 for no budget")
        self.strategy, self.privacy, self.num_sites = strategy, privacy, num_sites
        self.accountant = _accountant(privacy.dp_delta, num_sites)
        self.round_event = GaussianPrivacyEvent(privacy.dp_noise, num_sites, num_sites)
        self.epsilon_by_round: dict[int, float] = {}
        self.update_norms_by_round: dict[int, list[float]] = {}  # central: each update's L2 norm before clipping
        self.stopped_before: int | None = None
        self.rng = np.random.default_rng()  # central noise; unseeded, so runs cannot replay it
        self._sent = ArrayRecord()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._sent = arrays
        budget = self.privacy.dp_epsilon_budget
        if (self.stopped_before is None and budget > 0
                and self.accountant.would_exceed(self.round_event, max_epsilon=budget)):
            self.stopped_before = server_round
            log(WARNING, "DP: round %d would spend more than dp-epsilon-budget %g (spent: %.4f); "
                "no further training rounds", server_round, budget, self.epsilon())
        if self.stopped_before is not None:
            return []
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        if self.privacy.dp == "local" and messages:
            self._spend(server_round)
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self.stopped_before is not None:
            return self._sent, None
        replies = list(replies)
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if self.privacy.dp == "central" and arrays is not None:
            arrays = self._noisy_mean(server_round, self.strategy.accepted)  # validated by the strategy
            self._spend(server_round)
        return arrays, metrics

    def _noisy_mean(self, server_round: int, replies: list[Message]) -> ArrayRecord:
        """The sent encoder plus the sum of the clipped updates / num_sites plus Gaussian noise."""
        if len(replies) > self.num_sites:
            raise ValueError(f"{len(replies)} sites answered, more than num_sites={self.num_sites}: "
                             "central DP's noise is calibrated for num_sites")
        sent = {k: v.numpy() for k, v in self._sent.items()}
        total = {k: np.zeros(v.shape, np.float64) for k, v in sent.items()}
        norms = []
        for reply in replies:
            (received,) = reply.content.array_records.values()
            if set(received) != set(sent):
                raise ValueError(f"node {reply.metadata.src_node_id} sent arrays other than those it received")
            update = {k: received[k].numpy() - sent[k] for k in sent}
            norms.append(l2_norm(update))
            for k, u in clip(update, self.privacy.dp_clip).items():
                total[k] += u
        self.update_norms_by_round[server_round] = sorted(norms)
        std = self.privacy.dp_noise * self.privacy.dp_clip / self.num_sites
        log(INFO, "DP: %d updates (L2 norms %s) clipped to %g, noise std %.4g added to their mean",
            len(replies), ", ".join(f"{n:.3g}" for n in sorted(norms)), self.privacy.dp_clip, std)
        return ArrayRecord({k: Array((sent[k] + total[k] / self.num_sites
                                      + self.rng.normal(0.0, std, sent[k].shape)).astype(sent[k].dtype))
                            for k in sent})

    def _spend(self, server_round: int) -> None:
        self.accountant.compose(self.round_event)
        self.epsilon_by_round[server_round] = self.epsilon()
        log(INFO, "DP: ε = %.4f at δ = %g after round %d", self.epsilon(), self.privacy.dp_delta, server_round)

    def epsilon(self) -> float:
        """ε spent so far, at dp-delta."""
        return self.accountant.get_epsilon(self.privacy.dp_delta)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        log(INFO, "\t├──> DP (%s): clip %g, noise multiplier %g, δ %g, ε budget %s", self.privacy.dp,
            self.privacy.dp_clip, self.privacy.dp_noise, self.privacy.dp_delta,
            self.privacy.dp_epsilon_budget or "none")
        self.strategy.summary()

    def state_dict(self) -> dict:
        """What a resumed run needs to continue the account (server.rounds parts)."""
        return {"accountant": self.accountant.state_dict(), "epsilon_by_round": self.epsilon_by_round,
                "stopped_before": self.stopped_before, "update_norms_by_round": self.update_norms_by_round}

    def load_state_dict(self, state: dict) -> None:
        self.accountant.load_state_dict(state["accountant"])
        self.epsilon_by_round = {int(k): float(v) for k, v in state["epsilon_by_round"].items()}
        self.stopped_before = state["stopped_before"]
        self.update_norms_by_round = {int(k): list(v) for k, v in state["update_norms_by_round"].items()}


def main(argv: list[str] | None = None) -> int:
    """`python -m server.privacy --epsilon 4 --rounds 5 [--delta 1e-5]`: the dp-noise that spends that ε."""
    import argparse

    parser = argparse.ArgumentParser(description="The noise multiplier (dp-noise) with which a run of --rounds "
                                     "training rounds spends at most --epsilon at --delta (RDP accountant).")
    parser.add_argument("--epsilon", type=float, required=True)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--delta", type=float, default=1e-5)
    args = parser.parse_args(argv)
    noise = noise_for_epsilon(args.epsilon, args.rounds, args.delta)
    print(f"dp-noise={noise:.4g}  (ε = {epsilon_after(noise, args.rounds, args.delta):.4f} at δ = {args.delta:g} "
          f"after {args.rounds} rounds)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
