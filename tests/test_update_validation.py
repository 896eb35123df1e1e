"""The checks on one site's encoder update and the aggregation rules (shared.updates), by hand."""

import math

import pytest
import torch

from shared.config import FederationArgs
from shared.updates import (Rejected, aggregate, check_settings, check_update, clip_update, training_windows,
                            update_norm)

SENT = {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "b": torch.tensor([0.5])}


def _moved(**by):
    return {k: v + torch.tensor(by.get(k, 0.0), dtype=v.dtype) for k, v in SENT.items()}


def test_check_update_returns_the_update_in_float64():
    update = check_update(SENT, _moved(w=[[0.5, 0.0], [0.0, 0.0]], b=[-0.25]))
    assert update["w"].dtype == torch.float64
    torch.testing.assert_close(update["w"], torch.tensor([[0.5, 0.0], [0.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(update["b"], torch.tensor([-0.25], dtype=torch.float64))


@pytest.mark.parametrize("received, reason", [
    ({"w": SENT["w"]}, r"arrays differ from those sent: missing \['b'\], unexpected \[\]"),
    ({**SENT, "extra": torch.zeros(1)}, r"missing \[\], unexpected \['extra'\]"),
    ({**SENT, "w": torch.zeros(4)}, r"w is torch.float32 \(4,\), sent torch.float32 \(2, 2\)"),
    ({**SENT, "b": torch.zeros(1, 1)}, r"b is torch.float32 \(1, 1\)"),
    ({**SENT, "b": torch.tensor([0.5], dtype=torch.float64)}, r"b is torch.float64 \(1,\), sent torch.float32"),
    ({**SENT, "w": torch.tensor([[1.0, math.nan], [3.0, 4.0]])}, "non-finite values in w"),
    ({**SENT, "b": torch.tensor([-math.inf])}, "non-finite values in b"),
])
def test_check_update_rejects_arrays_unlike_those_sent_and_non_finite_values(received, reason):
    with pytest.raises(Rejected, match=reason):
        check_update(SENT, received)


def test_the_update_norm_bound_counts_every_array_as_one_vector():
    received = _moved(w=[[3.0, 0.0], [0.0, 0.0]], b=[4.0])  # norm 5 over both arrays
    assert update_norm(check_update(SENT, received)) == 5.0
    assert update_norm(check_update(SENT, received, max_norm=5.0)) == 5.0  # at the bound: kept
    with pytest.raises(Rejected, match="update norm 5 above max-update-norm 4.9"):
        check_update(SENT, received, max_norm=4.9)


@pytest.mark.parametrize("claimed", [0, -5, 2.5, math.nan, math.inf, -math.inf, True, None, "12", [3]])
def test_a_window_count_must_be_a_positive_whole_number(claimed):
    with pytest.raises(Rejected, match="is not a positive whole number of training windows"):
        training_windows(claimed)


def test_window_counts_are_capped_by_the_setting_and_the_sites_first_claim():
    assert training_windows(12) == 12 and training_windows(12.0) == 12
    assert training_windows(100, cap=100) == 100
    with pytest.raises(Rejected, match="num-examples 101 above max-train-windows 100"):
        training_windows(101, cap=100)
    assert training_windows(30, first=10) == 10  # more than first reported: weighed as the first
    assert training_windows(5, first=10) == 5  # fewer is believed
    with pytest.raises(Rejected, match="above max-train-windows"):
        training_windows(1e9, first=10, cap=1000)


def _updates(*rows):
    return [{"w": torch.tensor(row, dtype=torch.float64)} for row in rows]


def test_fedavg_is_the_mean_weighted_by_windows_added_to_the_sent_encoder():
    sent = {"w": torch.tensor([1.0, 1.0])}
    result = aggregate(sent, _updates([1.0, 2.0], [5.0, 6.0]), [1, 3])
    # 1 + (1 * [1, 2] + 3 * [5, 6]) / 4 = 1 + [4, 5]
    torch.testing.assert_close(result["w"], torch.tensor([5.0, 6.0]))
    assert result["w"].dtype == torch.float32


def test_median_and_trimmed_mean_by_hand():
    sent = {"w": torch.tensor([0.5, 0.5])}
    updates = _updates([1, 10], [2, -3], [100, 0], [6, 5], [-50, 1])  # sorted: -50 1 2 6 100; -3 0 1 5 10
    weights = [1, 1000, 1, 1, 1]  # the robust rules weigh every site the same
    torch.testing.assert_close(aggregate(sent, updates, weights, "median")["w"], torch.tensor([2.5, 1.5]))
    # one of five cut at each end: (1 + 2 + 6) / 3, (0 + 1 + 5) / 3
    torch.testing.assert_close(aggregate(sent, updates, weights, "trimmed-mean", 0.2)["w"], torch.tensor([3.5, 2.5]))


def test_an_even_count_median_is_the_mean_of_the_middle_two_and_few_sites_are_not_trimmed():
    sent = {"w": torch.tensor([0.0])}
    updates = _updates([1.0], [2.0], [10.0], [3.0])
    torch.testing.assert_close(aggregate(sent, updates, [1] * 4, "median")["w"], torch.tensor([2.5]))
    # int(0.2 x 4) = 0 cut: the plain mean (1 + 2 + 10 + 3) / 4; int(0.25 x 4) = 1 cut: (2 + 3) / 2
    torch.testing.assert_close(aggregate(sent, updates, [1] * 4, "trimmed-mean", 0.2)["w"], torch.tensor([4.0]))
    torch.testing.assert_close(aggregate(sent, updates, [1] * 4, "trimmed-mean", 0.25)["w"], torch.tensor([2.5]))


def test_clipping_scales_long_updates_to_the_norm_before_aggregating():
    long, short, still = _updates([3.0, 4.0], [0.3, 0.4], [0.0, 0.0])  # norms 5, 0.5 and 0
    assert update_norm(clip_update(long, 1.0)) == pytest.approx(1.0)
    torch.testing.assert_close(clip_update(short, 1.0)["w"], short["w"])
    torch.testing.assert_close(clip_update(still, 1.0)["w"], still["w"])  # an unchanged encoder stays so
    sent = {"w": torch.tensor([0.0, 0.0])}
    # ([0.6, 0.8] + [0.3, 0.4] + [0, 0]) / 3
    torch.testing.assert_close(aggregate(sent, [long, short, still], [1, 1, 1], clip_norm=1.0)["w"],
                               torch.tensor([0.3, 0.4]))


@pytest.mark.parametrize("settings, key", [
    ({"aggregation": "krum"}, "aggregation must be one of fedavg, median, trimmed-mean"),
    ({"trim_fraction": 0.5}, "trim-fraction"), ({"trim_fraction": -0.1}, "trim-fraction"),
    ({"clip_update_norm": -1.0}, "clip-update-norm"), ({"max_update_norm": math.nan}, "max-update-norm"),
    ({"max_train_windows": -1}, "max-train-windows"),
])
def test_settings_that_cannot_be_used_are_refused_naming_the_key(settings, key):
    with pytest.raises(ValueError, match=key):
        check_settings(FederationArgs(**settings))
    check_settings(FederationArgs())


def test_fedavg_is_flowers_fedavg_bit_for_bit():
    """Runs aggregated here reproduce those aggregated by Flower's FedAvg (float32 products summed in order)."""
    import numpy as np
    from flwr.app import ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

    from shared.updates import aggregate

    rng = np.random.default_rng(0)
    sent = {"w": torch.from_numpy(rng.normal(size=(50, 7)).astype(np.float32))}
    returned = [{"w": sent["w"] + torch.from_numpy(rng.normal(scale=0.01, size=(50, 7)).astype(np.float32))}
                for _ in range(5)]
    weights = [120, 7, 33, 1000, 64]
    ours = aggregate(sent, [{"w": r["w"].double() - sent["w"].double()} for r in returned], weights)["w"]
    records = [RecordDict({"a": ArrayRecord({"w": r["w"]}), "m": MetricRecord({"num-examples": w})})
               for r, w in zip(returned, weights)]
    flower = aggregate_arrayrecords(records, "num-examples")["w"].numpy()
    assert ours.dtype == torch.float32 and np.array_equal(ours.numpy(), flower)
