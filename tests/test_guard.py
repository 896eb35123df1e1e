"""The negative-transfer guard decides on robust validation evidence only."""

import pytest

from shared.guard import decide


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


def test_misaligned_errors_are_refused():
    with pytest.raises(ValueError, match="shape"):
        decide([1.0, 2.0], [1.0])
