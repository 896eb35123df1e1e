"""The forecaster: a shared patch-transformer `encoder` that forecasts on its own, and a private
`head` that adapts its forecast to one site.

What travels between a site and the server is `model.encoder.state_dict()` and nothing else;
the head and the data stay at the site. A fresh head is the identity, so a site with no training
window yet (a new site) is served the shared forecast. Normalisation is per window (RevIN without affine
parameters) and computed at forward time, so no statistic is stored in either submodule.

References: Nie et al., "A Time Series is Worth 64 Words: Long-term Forecasting with
Transformers" (PatchTST), ICLR 2023; Kim et al., "Reversible Instance Normalization for
Accurate Time-Series Forecasting against Distribution Shift" (RevIN), ICLR 2022.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

EPS = 1e-5  # added to each window's standard deviation so flat windows stay finite


@dataclass(frozen=True)
class ModelArgs:
    """Everything needed to rebuild a Forecaster (stored in every checkpoint)."""

    lookback: int = 168  # input points; one week of hourly data
    horizon: int = 24  # forecast points
    patch_len: int = 24  # one day of hourly data per token
    patch_stride: int = 12  # half-overlapping patches: 13 tokens for lookback 168
    d_model: int = 64  # small enough to train on 2 CPU cores in minutes
    n_heads: int = 4  # attention heads (d_model must divide by it)
    n_layers: int = 2  # transformer layers
    d_ff: int = 128  # feed-forward width
    dropout: float = 0.1  # inside the transformer only
    lags: tuple[int, ...] = (1, 24, 168)  # simple forecasts the head mixes: naive and seasonal naive
    head_features: str = "all"  # what the head's correction reads: "all" tokens flattened, or their "mean"
    futr_exog: tuple[str, ...] = ()  # known-ahead covariates (columns of the data): their values at the last
    # input point and over the horizon feed the shared encoder's known-ahead correction
    known_hidden: int = 0  # 0: that correction is linear per step; N: plus an MLP of N units over the
    # covariates and the normalised window (interactions, e.g. wind clearing what has built up)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lags", tuple(int(lag) for lag in self.lags))
        object.__setattr__(self, "futr_exog", tuple(str(col) for col in self.futr_exog))
        if self.patch_len > self.lookback:
            raise ValueError(f"patch_len {self.patch_len} exceeds lookback {self.lookback}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if not self.lags or any(lag < 1 or lag > self.lookback for lag in self.lags):
            raise ValueError(f"lags {self.lags} must lie in 1..lookback ({self.lookback})")
        if self.head_features not in ("all", "mean"):
            raise ValueError(f"head_features must be 'all' or 'mean', not {self.head_features!r}")
        if self.known_hidden < 0 or (self.known_hidden and not self.futr_exog):
            raise ValueError(f"known_hidden {self.known_hidden}: must be >= 0, and 0 without futr_exog")
        reserved = {"unique_id", "ds", "y", "site", "observed"} & set(self.futr_exog)
        if reserved or len(set(self.futr_exog)) < len(self.futr_exog):
            raise ValueError(f"futr_exog {list(self.futr_exog)}: names must be distinct and not {sorted(reserved)}")

    def without_covariates(self) -> ModelArgs:
        """The same model without the known-ahead correction (what the pretraining corpus can train)."""
        return replace(self, futr_exog=(), known_hidden=0)

    @property
    def n_patches(self) -> int:
        return (self.lookback - self.patch_len) // self.patch_stride + 1

    def to_dict(self) -> dict:
        return asdict(self) | {"lags": list(self.lags), "futr_exog": list(self.futr_exog)}

    @classmethod
    def from_dict(cls, values: dict) -> ModelArgs:
        return cls(**{k: (tuple(v) if k in ("lags", "futr_exog") else v) for k, v in values.items()})


def normalize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-window instance normalisation: returns (z, mean, std), each std >= EPS."""
    mean = x.mean(dim=-1, keepdim=True)
    std = x.std(dim=-1, keepdim=True, unbiased=False) + EPS
    return (x - mean) / std, mean, std


class PatchEncoder(nn.Module):
    """Patches of a normalised window -> transformer -> token embeddings [B, n_patches, d_model]."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.patch_len, self.patch_stride = args.patch_len, args.patch_stride
        self.span = (args.n_patches - 1) * args.patch_stride + args.patch_len  # points used
        self.embed = nn.Linear(args.patch_len, args.d_model)
        self.position = nn.Parameter(torch.randn(args.n_patches, args.d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(
            args.d_model, args.n_heads, args.d_ff, args.dropout,
            activation="gelu", batch_first=True, norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, args.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(args.d_model)
        self.project = nn.Linear(args.n_patches * args.d_model, args.horizon)  # the shared forecast
        self.known = KnownAhead(args) if args.futr_exog else None

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(token embeddings [B, P, d], the shared forecast [B, horizon]), both in normalised units."""
        patches = z[:, -self.span:].unfold(-1, self.patch_len, self.patch_stride)  # [B, P, len]
        tokens = self.norm(self.blocks(self.embed(patches) + self.position))  # [B, P, d]
        return tokens, self.project(tokens.flatten(1))


class KnownAhead(nn.Module):
    """Shared correction from known-ahead covariates, in the window's normalised units.

    Step h of the horizon adds a[c, h] * e[h, c] + b[c, h] * (e[h, c] - e[-1, c]) over the
    covariates c, where e holds the site-standardised covariates at the last input point (-1) and
    over the horizon; with `known_hidden` N, plus a one-hidden-layer MLP (N units) of e and the
    normalised window z. It starts at zero; being part of the encoder, it is what the federation
    learns of the covariates' effect, so a site with little history gets the others' estimate.
    """

    def __init__(self, args: ModelArgs):
        super().__init__()
        n, horizon = len(args.futr_exog), args.horizon
        self.level = nn.Parameter(torch.zeros(n, horizon))
        self.change = nn.Parameter(torch.zeros(n, horizon))
        self.bias = nn.Parameter(torch.zeros(horizon))
        self.mlp = None
        if args.known_hidden:
            self.mlp = nn.Sequential(nn.Linear(n * (horizon + 1) + args.lookback, args.known_hidden), nn.GELU(),
                                     nn.Dropout(args.dropout), nn.Linear(args.known_hidden, horizon))
            nn.init.zeros_(self.mlp[-1].weight)
            nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, e: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        ahead = e[:, 1:].transpose(1, 2)  # [B, C, H]
        change = ahead - e[:, :1].transpose(1, 2)
        out = (ahead * self.level + change * self.change).sum(dim=1) + self.bias
        if self.mlp is not None:
            out = out + self.mlp(torch.cat([e.flatten(1), z], dim=1))
        return out


class ForecastHead(nn.Module):
    """A site's adapter of the shared forecast: out = shared + sum_k mix[k] * (simple_k - shared)
    + correction(tokens).

    It starts as the identity (mix and correction at zero): a head that never saw a window serves
    the shared forecast. `shared.train.anchor_head` may point it at a simple forecast (naive or
    seasonal naive) that beats the shared one on the site's training windows; training learns the
    mix and the correction from the site's windows.
    """

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.pool = args.head_features == "mean"
        self.mix = nn.Parameter(torch.zeros(len(args.lags), args.horizon))
        self.correction = nn.Linear(args.d_model if self.pool else args.n_patches * args.d_model, args.horizon)
        nn.init.zeros_(self.correction.weight)
        nn.init.zeros_(self.correction.bias)
        if args.futr_exog:  # the site's standardisation of its covariates, set from its training windows
            self.register_buffer("exog_mean", torch.zeros(len(args.futr_exog)))
            self.register_buffer("exog_std", torch.ones(len(args.futr_exog)))

    def standardize(self, exog: torch.Tensor) -> torch.Tensor:
        return (exog - self.exog_mean) / self.exog_std

    def forward(self, tokens: torch.Tensor, simple: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        features = tokens.mean(dim=1) if self.pool else tokens.flatten(1)
        away = ((simple - shared[:, None]) * self.mix).sum(dim=1)  # [B, H]
        return shared + away + self.correction(features)


class Forecaster(nn.Module):
    """Raw window [B, lookback] (and, with futr_exog, covariates [B, horizon + 1, C] at the last input
    point and over the horizon) -> forecast [B, horizon], on the window's own scale."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.encoder = PatchEncoder(args)
        self.head = ForecastHead(args)
        steps = torch.arange(args.horizon)
        # index of the point each simple forecast repeats: lag m repeats the last m points
        index = torch.stack([args.lookback - lag + steps % lag for lag in args.lags])
        self.register_buffer("simple_index", index, persistent=False)  # [K, H], derived from args

    def forward_normalized(self, x: torch.Tensor, exog: torch.Tensor | None = None, head: bool = True
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Forecast in normalised units, with the window's mean and std to undo it; `head` False:
        the shared forecast alone (what the encoder learns from in federated rounds)."""
        z, mean, std = normalize(x)
        tokens, out = self.encoder(z)
        if head:
            out = self.head(tokens, z[:, self.simple_index], out)  # simple forecasts [B, K, H]
        if self.encoder.known is not None:
            want = (len(x), self.args.horizon + 1, len(self.args.futr_exog))
            if exog is None or tuple(exog.shape) != want:
                raise ValueError(f"the model reads covariates {list(self.args.futr_exog)}: expected them as "
                                 f"{list(want)}, got {None if exog is None else list(exog.shape)}")
            out = out + self.encoder.known(self.head.standardize(exog), z)
        return out, mean, std

    def forward(self, x: torch.Tensor, exog: torch.Tensor | None = None, head: bool = True) -> torch.Tensor:
        out, mean, std = self.forward_normalized(x, exog, head)
        return out * std + mean


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def state_bytes(state: dict[str, torch.Tensor]) -> int:
    """Bytes of the tensors in a state dict (the payload of one encoder update)."""
    return sum(t.numel() * t.element_size() for t in state.values())
