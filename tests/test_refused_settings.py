"""The ServerApp refuses the settings that cannot apply under SecAgg+ or central DP, naming them, before
it pretrains or writes anything (server.app.refuse_combinations)."""

import pytest
from flwr.app import Context, RecordDict

from server.app import main, refuse_combinations
from shared.config import Settings
from tests.conftest import TINY

SECAGG, CENTRAL = {"secagg": True}, {"dp": "central"}


def _check(**changes) -> None:
    settings = Settings.from_config({**TINY, **changes})
    refuse_combinations(settings.federation, settings.privacy)


@pytest.mark.parametrize(("changes", "refused"), [
    ({**SECAGG, "aggregation": "median"}, "aggregation cannot apply with secagg"),
    ({**SECAGG, "aggregation": "trimmed-mean"}, "aggregation cannot apply with secagg"),
    ({**SECAGG, "max-update-norm": 5.0}, "max-update-norm cannot apply with secagg"),
    ({**SECAGG, "max-train-windows": 500}, "max-train-windows cannot apply with secagg"),
    ({**SECAGG, "roster": "roster.json"}, "roster cannot apply with secagg"),
    ({**SECAGG, "aggregation": "median", "max-train-windows": 500},
     "aggregation, max-train-windows cannot apply with secagg"),
    ({**CENTRAL, "aggregation": "median"}, "aggregation cannot apply with dp = central"),
    ({**CENTRAL, "aggregation": "trimmed-mean"}, "aggregation cannot apply with dp = central"),
    ({**CENTRAL, "clip-update-norm": 1.0}, "clip-update-norm cannot apply with dp = central"),
])
def test_a_setting_that_cannot_apply_is_refused_by_name(changes, refused):
    with pytest.raises(ValueError, match=f"^{refused}: SecAgg"):
        _check(**changes)


@pytest.mark.parametrize("changes", [
    {**SECAGG, "clip-update-norm": 1.0},  # each site clips before masking
    {**CENTRAL, "max-update-norm": 5.0, "max-train-windows": 500, "roster": "roster.json"},  # checked per reply
    {"dp": "local", "aggregation": "median", "clip-update-norm": 1.0, "max-update-norm": 5.0,
     "max-train-windows": 500, "roster": "roster.json"},
    {"aggregation": "trimmed-mean", "clip-update-norm": 1.0, "max-update-norm": 5.0, "max-train-windows": 500,
     "roster": "roster.json"},
])
def test_settings_that_apply_are_accepted(changes):
    _check(**changes)


def test_the_server_app_refuses_before_pretraining(tmp_path):
    run_config = {**TINY, **SECAGG, "max-train-windows": 500, "out-dir": str(tmp_path / "out"),
                  "cache-dir": str(tmp_path / "cache")}
    with pytest.raises(ValueError, match="^max-train-windows cannot apply with secagg"):
        main(object(), Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config))
    assert list(tmp_path.iterdir()) == []
