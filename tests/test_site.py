"""A site's private state: the head persists across rounds, alone options are cached, bad state is refused."""

import json
from dataclasses import replace

import pytest
import torch

from client.site import Site, step
from shared.guard import divide
from shared.train import round_seed
from shared.sites import read_sites, select_site
from shared.data import DataError
from shared.model import Forecaster
from shared.train import body_update


def _site(settings, tmp_path, index=0):
    name, frame = select_site(read_sites(settings.data), "demo", index=index)
    return Site.open(name, frame, tmp_path / name, settings.data)


def test_head_after_round_one_is_the_head_round_two_starts_with(tiny_settings, tmp_path):
    site = _site(tiny_settings, tmp_path)
    args = tiny_settings.model
    encoder = Forecaster(args).encoder.state_dict()
    new_encoder, _ = site.train_round(args, tiny_settings.train, encoder, 1)
    site.evaluate_round(args, tiny_settings.train, new_encoder, 1)
    saved = torch.load(site.model_path, weights_only=True)["state_dict"]
    head_after_round_1 = {k[len("head."):]: v for k, v in saved.items() if k.startswith("head.")}

    restored = site.restore(args, new_encoder, at=step(2, "train"))  # what round 2 starts from
    assert head_after_round_1.keys() == restored.head.state_dict().keys()
    for key, value in restored.head.state_dict().items():
        assert torch.equal(value, head_after_round_1[key])
    # and it is not a fresh head: the site really learned one
    assert not torch.equal(restored.head.mix, Forecaster(args).head.mix)


def test_local_epochs_send_the_encoder_trained_on_its_own_forecast_and_leave_the_head(tiny_settings, tmp_path):
    """With local-epochs, a round's update is the encoder alone trained on the shared forecast's loss
    (body_update, the same seed); the head plays no part and is kept as it started."""
    site = _site(tiny_settings, tmp_path)
    args = tiny_settings.model
    encoder = Forecaster(args).encoder.state_dict()
    train = replace(tiny_settings.train, local_epochs=1)
    sent, metrics = site.train_round(args, train, encoder, 1)
    assert any(not torch.equal(v, encoder[k]) for k, v in sent.items())
    kept = torch.load(site.model_path, weights_only=True)["state_dict"]
    expected = site.restore(args, encoder, at=step(1, "train"))  # the same fresh, anchored head
    body_update(expected, divide(site.splits(args))[0], replace(train, seed=round_seed(train.seed, site.name, 1)), 1)
    assert all(torch.equal(v, expected.encoder.state_dict()[k]) for k, v in sent.items())
    for key, value in expected.head.state_dict().items():
        assert torch.equal(kept[f"head.{key}"], value)
    assert metrics["epochs"] == 1


def test_a_repeated_phase_starts_from_the_same_head_and_a_new_run_from_a_fresh_one(tiny_settings, tmp_path):
    """A server that resumes repeats the round it was in; the site must answer it as the first time."""
    site = _site(tiny_settings, tmp_path)
    args, train = tiny_settings.model, tiny_settings.train
    encoder = Forecaster(args).encoder.state_dict()
    after_1, _ = site.train_round(args, train, encoder, 1, run="r")
    first, _ = site.train_round(args, train, after_1, 2, run="r")
    again, _ = site.train_round(args, train, after_1, 2, run="r")  # round 2 once more, after a resume
    assert all(torch.equal(first[k], again[k]) for k in first)
    # run "r" keeps a head of its own (here set by hand, so that it surely differs from a fresh one) ...
    mine = site.restore(args, after_1, run="r", at=step(3, "train"))
    with torch.no_grad():
        mine.head.correction.weight.add_(1.0)
    site.keep(mine, "r", step(2, "evaluate"))
    kept = site.restore(args, after_1, run="r", at=step(3, "train")).head.state_dict()
    assert all(torch.equal(kept[k], v) for k, v in mine.head.state_dict().items())
    # ... and another run starts from a fresh anchored head, not from it
    fresh = site.restore(args, after_1, run="other", at=step(3, "train")).head.state_dict()
    first_head = site.restore(args, encoder, run="r", at=step(1, "train")).head.state_dict()
    assert all(torch.equal(fresh[k], first_head[k]) for k in fresh)
    assert not torch.equal(fresh["correction.weight"], kept["correction.weight"])


def test_evaluation_reports_federated_next_to_every_alone_option(tiny_settings, tmp_path):
    site = _site(tiny_settings, tmp_path)
    args = tiny_settings.model
    ev = site.evaluate_round(args, tiny_settings.train, Forecaster(args).encoder.state_dict(), 1)
    arms = ("naive", "seasonal_naive_24", "auto_ets", "auto_theta", "local_only", "alone_best", "federated", "served")
    assert set(ev.arms) == set(arms)
    for arm in arms:
        assert ev.arms[arm].val_mae > 0 and ev.arms[arm].test["mae"] > 0
    alone = json.loads((site.state_dir / "alone.json").read_text())
    assert ev.alone_choice == alone["best"]
    # alone_best is the option with the lowest validation MAE, and its numbers are that option's
    best = min(arms[:5], key=lambda a: ev.arms[a].val_mae)
    assert alone["best"] == best and ev.arms["alone_best"] == ev.arms[best]
    served = "federated" if ev.guard.serve == "federated" else "alone_best"
    assert ev.arms["served"] == ev.arms[served]
    guard = json.loads((site.state_dir / "guard.json").read_text())
    assert guard["serve"] == ev.guard.serve and guard["alone_choice"] == best
    assert (site.state_dir / "local_only.pt").exists()


def test_state_for_other_model_arguments_is_refused(tiny_settings, tmp_path):
    site = _site(tiny_settings, tmp_path)
    args = tiny_settings.model
    site.train_round(args, tiny_settings.train, Forecaster(args).encoder.state_dict(), 1)
    other = args.__class__(**{**args.to_dict(), "d_model": 32, "d_ff": 64})
    with pytest.raises(ValueError, match="other model arguments"):
        site.restore(other, Forecaster(other).encoder.state_dict())


def test_select_site(tiny_settings):
    frame = read_sites(tiny_settings.data)
    assert select_site(frame, "f", index=2)[0] == "site02"
    assert select_site(frame, "f", name="site01")[0] == "site01"
    with pytest.raises(DataError, match="federation has 5 sites but the data has 3"):
        select_site(frame, "f", index=0, expected_sites=5)
    with pytest.raises(DataError, match="no site named 'x'"):
        select_site(frame, "f", name="x")
    with pytest.raises(DataError, match="say which one"):
        select_site(frame, "f")


def test_guard_falls_back_when_the_federated_model_is_clearly_worse(tiny_settings, tmp_path):
    """A site handed a broken global model (its forecasts shifted far off) keeps its best alone option."""
    site = _site(tiny_settings, tmp_path)
    args = tiny_settings.model
    broken = Forecaster(args)
    torch.nn.init.constant_(broken.head.correction.bias, 25.0)  # 25 window standard deviations too high
    ev = site.evaluate_round(args, tiny_settings.train, broken.state_dict(), 1, exchange="model")
    assert ev.arms["federated"].val_mae > 2 * ev.arms["alone_best"].val_mae
    assert ev.guard.serve == "alone_best"
    assert ev.arms["served"] == ev.arms["alone_best"]
    assert json.loads((site.state_dir / "guard.json").read_text())["serve"] == "alone_best"


def test_guard_serves_a_federated_model_that_is_clearly_better(tiny_settings, tmp_path):
    """The same site handed a model that knows its future (trained on its test period) serves it."""
    site = _site(tiny_settings, tmp_path)
    args, splits = tiny_settings.model, site.splits(tiny_settings.model)
    from shared.data import Splits
    from shared.train import train_scratch

    oracle = Forecaster(args)
    cheat = Splits(train=splits.val, val=splits.val, test=splits.test)  # fitted on validation itself
    train_scratch(oracle, cheat, tiny_settings.train.__class__(max_epochs=30, steps_per_epoch=20, lr=0.01))
    ev = site.evaluate_round(args, tiny_settings.train, oracle.state_dict(), 1, exchange="model")
    assert ev.arms["federated"].val_mae < 0.9 * ev.arms["alone_best"].val_mae
    assert ev.guard.serve == "federated"
    assert ev.arms["served"] == ev.arms["federated"]


def test_validation_windows_alternate_between_fitting_and_judging(tiny_settings, tmp_path):
    from shared.guard import divide

    splits = _site(tiny_settings, tmp_path).splits(tiny_settings.model)
    fit, judging = divide(splits)
    assert len(fit.val) + judging.sum() == len(splits.val) and judging.sum() >= 4
    origins = sorted(set(splits.val.origin))
    assert set(fit.val.origin) == set(origins[0::2]) and set(splits.val.origin[judging]) == set(origins[1::2])
    assert fit.train is splits.train and fit.test is splits.test
