"""The message boundary (shared.wire): a state dict travels as one flat array and comes back exactly."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from shared import wire
from shared.model import Forecaster
from tests.conftest import TINY


def _encoder():
    from shared.config import Settings

    torch.manual_seed(0)
    return Forecaster(Settings.from_config(TINY).model).encoder.state_dict()


def test_an_encoder_travels_as_one_array_and_unpacks_bit_for_bit():
    state = _encoder()
    layout = wire.loads(wire.dumps(wire.layout_of(state)))
    record = ArrayRecord(wire.pack(state))  # as a message carries it
    assert list(record) == [wire.KEY] and len(state) > 10  # one array instead of one per tensor
    assert record[wire.KEY].numpy().shape == (sum(t.numel() for t in state.values()),)
    back = wire.unpack(record, layout)
    assert list(back) == list(state)
    assert all(torch.equal(back[k], state[k]) and back[k].dtype == torch.float32 for k in state)
    back[next(iter(back))].add_(1.0)  # unpacked tensors own their memory
    assert torch.equal(wire.unpack(record, layout)[next(iter(state))], state[next(iter(state))])


def test_packing_follows_the_given_layout_not_the_dict_order():
    state = _encoder()
    layout = wire.layout_of(state)
    shuffled = dict(reversed(list(state.items())))
    assert np.array_equal(wire.pack(shuffled, layout)[wire.KEY].numpy(), wire.pack(state)[wire.KEY].numpy())
    assert not np.array_equal(wire.pack(shuffled)[wire.KEY].numpy(), wire.pack(state)[wire.KEY].numpy())


@pytest.mark.parametrize("case, match", [
    ("missing", "differ from the layout: missing"),
    ("extra", "unexpected"),
    ("shape", "the layout says float32"),
    ("dtype", "the layout says float32"),
])
def test_arrays_that_do_not_fit_the_layout_are_refused(case, match):
    state = _encoder()
    layout = wire.layout_of(state)
    first = next(iter(state))
    if case == "missing":
        state.pop(first)
    elif case == "extra":
        state["head.extra"] = torch.zeros(2)
    elif case == "shape":
        state[first] = torch.zeros(3)
    else:
        state[first] = state[first].double()
    with pytest.raises(ValueError, match=match):
        wire.pack(state, layout)


def test_a_packed_record_that_does_not_fit_the_layout_is_refused():
    state = _encoder()
    layout = wire.layout_of(state)
    short = ArrayRecord({wire.KEY: Array(np.zeros(5, np.float32))})
    with pytest.raises(ValueError, match="the layout needs float32"):
        wire.unpack(short, layout)
    with pytest.raises(ValueError, match="expected one packed array"):
        wire.unpack(ArrayRecord({k: Array(v.numpy()) for k, v in state.items()}), layout)
    with pytest.raises(ValueError, match="array-layout: not a list"):
        wire.loads('{"a": 1}')


def test_shared_code_knows_nothing_of_flower():
    """shared/ (model, data, training, the message format) imports no Flower module."""
    code = ("import pkgutil, importlib, sys, shared\n"
            "for m in pkgutil.iter_modules(shared.__path__): importlib.import_module('shared.' + m.name)\n"
            "print(sorted(n for n in sys.modules if n == 'flwr' or n.startswith('flwr.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
