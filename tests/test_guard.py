"""The negative-transfer guard decides on robust validation evidence only."""

import math

import pytest

import numpy as np
import pandas as pd

from shared.guard import divide
from shared.data import make_splits, regularize, validate
from shared.guard import MIN_WINDOWS, decide, evidence_warning, judging_origins, sign_test_p


def test_clearly_better_federated_is_served():
    d = decide([1.0, 1.1, 0.9, 1.0, 1.2], [1.5, 1.4, 1.6, 1.5, 1.3])
    assert d.serve == "federated" and d.val_win_share == 1.0 and d.windows == 5


def test_a_tie_within_the_margin_keeps_alone():
    d = decide([1.0] * 6, [1.01] * 6, margin=0.02)  # 1 % better: inside the 2 % margin
    assert d.serve == "alone_best"


def test_one_lucky_window_does_not_carry_the_mean():
    # mean clearly lower thanks to one window, but alone wins the other four
    d = decide([0.1, 1.05, 1.05, 1.05, 1.05], [2.0, 1.0, 1.0, 1.0, 1.0])
    assert d.val_mae_federated < 0.98 * d.val_mae_alone
    assert d.val_win_share == pytest.approx(0.2) and d.serve == "alone_best"


def test_too_few_windows_keep_alone():
    assert decide([1.0, 1.0], [2.0, 2.0]).serve == "alone_best"
    assert decide([1.0] * 3, [2.0] * 3).serve == "alone_best"  # all 3 won: p = 1/8 > 0.1
    none = decide([], [])  # a site without judging windows
    assert none.serve == "alone_best" and none.windows == 0 and none.sign_p == 1.0


@pytest.mark.parametrize("wins, windows, serve", [(4, 4, "federated"), (3, 4, "alone_best"), (2, 4, "alone_best"),
                                                  (7, 8, "federated"), (6, 8, "alone_best"), (8, 10, "federated")])
def test_the_wins_must_pass_a_sign_test(wins, windows, serve):
    # each win by a wide margin, each loss by a little: the mean alone would always serve federated
    federated = [1.0] * wins + [1.01] * (windows - wins)
    d = decide(federated, [2.0] * wins + [1.0] * (windows - wins))
    assert d.val_mae_federated < 0.9 * d.val_mae_alone
    assert d.serve == serve and d.windows == windows and d.val_win_share == wins / windows
    assert d.sign_p == pytest.approx(sum(math.comb(windows, k) for k in range(wins, windows + 1)) / 2**windows)


def test_ties_count_as_losses():
    assert decide([1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 1.0]).serve == "alone_best"


def test_sign_test_p():
    assert sign_test_p(4, 4) == 1 / 16 and sign_test_p(0, 5) == 1.0 and sign_test_p(3, 4) == 5 / 16
    assert MIN_WINDOWS == 4


def test_misaligned_errors_are_refused():
    with pytest.raises(ValueError, match="shape"):
        decide([1.0, 2.0], [1.0])


@pytest.mark.parametrize("val_size, horizon, stride", [(42, 14, 7), (240, 24, 24), (56, 14, 7), (10, 12, 1), (30, 5, 4)])
def test_judging_origins_count_the_windows_the_guard_judges(val_size, horizon, stride):
    n = 200 + val_size
    frame = pd.DataFrame({"unique_id": "a", "ds": pd.date_range("2024-01-01", periods=n, freq="D"),
                          "y": np.arange(n, dtype=float)})
    regular, _ = regularize(validate(frame, "test"))
    if val_size < horizon:
        assert judging_origins(val_size, horizon, stride) == 0
        return
    splits = make_splits(regular, 28, horizon, val_size, 20, stride=stride)
    _, judging = divide(splits)
    assert judging_origins(val_size, horizon, stride) == int(judging.sum())


def test_settings_too_short_to_judge_are_named_with_the_fix():
    message = evidence_warning(42, 14, 7)  # NN5's benchmark: 5 origins, 2 judging
    assert "2 judging validation origins" in message and "fewer than 2 series" in message
    assert "val-size 63" in message
    assert judging_origins(63, 14, 7) == MIN_WINDOWS  # and the suggested size is enough
    assert evidence_warning(240, 24, 24) == ""  # Beijing's: 5 judging
    assert "every site always serves alone_best" in evidence_warning(20, 14, 7)  # one origin: none judges
