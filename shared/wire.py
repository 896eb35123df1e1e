"""How a state dict travels in a Flower message: one flat float32 array.

Flower 1.41 moves every array of a message as separate objects, each its own request between
SuperNode and SuperLink, so a message carrying the encoder's ~30 tensors cost dozens of requests
per site and direction. Packed, it is one array. The layout (names and shapes, in order) travels
in the message's config as `array-layout`; the receiver unpacks to the same named state dict, so
everything above the message boundary (training, signatures, checkpoints) sees named tensors.
Plain torch: the apps put `pack`'s one-entry state dict in an `ArrayRecord`, and `unpack` reads
any mapping of arrays with `.numpy()`, such as the `ArrayRecord` a message carries.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import torch

KEY = "flat"
LAYOUT = "array-layout"

Layout = list[tuple[str, tuple[int, ...]]]


def layout_of(state: Mapping[str, torch.Tensor]) -> Layout:
    """The names and shapes of `state`, in order."""
    return [(name, tuple(tensor.shape)) for name, tensor in state.items()]


def dumps(layout: Layout) -> str:
    return json.dumps([[name, list(shape)] for name, shape in layout])


def loads(text: str) -> Layout:
    try:
        return [(str(name), tuple(int(d) for d in shape)) for name, shape in json.loads(text)]
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{LAYOUT}: not a list of [name, shape] pairs ({exc})") from exc


def pack(state: Mapping[str, torch.Tensor], layout: Layout | None = None) -> dict[str, torch.Tensor]:
    """`state` as one flat float32 array under KEY, in `layout`'s order (default: its own)."""
    layout = layout_of(state) if layout is None else layout
    names = [name for name, _ in layout]
    if set(names) != set(state) or len(names) != len(state):
        raise ValueError(f"arrays to send differ from the layout: missing {sorted(set(names) - set(state))[:5]}, "
                         f"unexpected {sorted(set(state) - set(names))[:5]}")
    parts = []
    for name, shape in layout:
        tensor = state[name]
        if tuple(tensor.shape) != shape or tensor.dtype != torch.float32:
            raise ValueError(f"array {name!r}: {tensor.dtype} {tuple(tensor.shape)}, the layout says float32 {shape}")
        parts.append(tensor.detach().cpu().reshape(-1))
    flat = torch.cat(parts) if parts else torch.zeros(0)
    return {KEY: flat.contiguous()}


def unpack(record: Mapping, layout: Layout) -> dict[str, torch.Tensor]:
    """The named state dict a packed record holds; ValueError if it does not fit `layout`."""
    if list(record) != [KEY]:
        raise ValueError(f"expected one packed array {KEY!r}, got arrays {list(record)[:5]}")
    flat = torch.from_numpy(record[KEY].numpy().copy())
    sizes = [int(np.prod(shape, dtype=np.int64)) for _, shape in layout]
    if flat.dtype != torch.float32 or flat.dim() != 1 or flat.numel() != sum(sizes):
        raise ValueError(f"packed array: {flat.dtype} {tuple(flat.shape)}, the layout needs float32 ({sum(sizes)},)")
    return {name: part.reshape(shape).clone() for (name, shape), part in zip(layout, torch.split(flat, sizes), strict=True)}
