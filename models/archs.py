"""Denoising autoencoder models and the window normalisation shared by training and inference.

No I/O here: a model is rebuilt from ``(arch, config)`` alone (stored in the checkpoint's JSON), the
weights come from ``models.checkpoint``.

Every window is standardised on its own (``window_standardize``): subtract the window mean, divide by
the window std. The model therefore only ever sees unit-scale rows, so one model serves sensors at any
gain or offset; ``models.forward`` maps the output back. Training standardises the *noisy* window and
applies the same mean/scale to the clean target, exactly as inference standardises what it receives.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

from models.forward import standardize

NORMALISATION = "window_standardize"


@dataclass(frozen=True)
class MLPConfig:
    window: int
    hidden: int = 256

    def __post_init__(self) -> None:
        for name in ("window", "hidden"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 2:
                raise ValueError(f"MLPConfig.{name} must be an integer >= 2, got {v!r}")


class DenoisingAutoencoder(nn.Module):
    """The seed MLP: window → hidden → hidden/2 (code) → hidden → window."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = config
        w, h = config.window, config.hidden
        self.encoder = nn.Sequential(nn.Linear(w, h), nn.ReLU(), nn.Linear(h, h // 2))
        self.decoder = nn.Sequential(nn.Linear(h // 2, h), nn.ReLU(), nn.Linear(h, w))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.config.window:
            raise ValueError(f"expected input (B, {self.config.window}), got {tuple(x.shape)}")
        return self.decode(self.encode(x))


# name → (config dataclass, module class); a checkpoint names its arch and stores the config dict.
ARCHITECTURES: dict[str, tuple[type, type[nn.Module]]] = {
    "mlp": (MLPConfig, DenoisingAutoencoder),
}


def make_config(arch: str, config: dict):
    """The config dataclass of ``arch`` from a plain dict, validated (no weights are created)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    cfg_cls, _ = ARCHITECTURES[arch]
    if not isinstance(config, dict):
        raise ValueError(f"config for {arch!r} must be a dict, got {type(config).__name__}")
    known = {f.name for f in fields(cfg_cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown config keys for {arch!r}: {unknown}; known: {sorted(known)}")
    try:
        return cfg_cls(**config)
    except TypeError as e:  # e.g. a missing required field
        raise ValueError(f"bad config for {arch!r}: {e}") from None


def build_model(arch: str, config: dict) -> nn.Module:
    """Instantiate ``arch`` from a plain config dict (as stored in ``model.json``)."""
    cfg = make_config(arch, config)
    return ARCHITECTURES[arch][1](cfg)


def one_pass(model: nn.Module) -> nn.Module:
    """A self-ensembled conv (``ConvConfig.self_ensemble`` > 1) as one pass of the same weights, in
    eval mode; any other model as it is. The ensemble is an inference-time average (training steps
    run the network once either way), so the one-pass network is the trained one."""
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, ConvConfig) or cfg.self_ensemble == 1:
        return model
    single = ConvDAE(replace(cfg, self_ensemble=1))
    single.load_state_dict(model.state_dict())
    return single.eval()


def model_config(model: nn.Module) -> dict:
    """The config dict a model was built from (round-trips through ``build_model``)."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        raise ValueError(f"{type(model).__name__} has no .config dataclass")
    return asdict(cfg)


# ----------------------------------------------------------------------------- overcomplete MLP
@dataclass(frozen=True)
class OvercompleteConfig:
    """MLP whose code is *wider* than the window: window → latent → latent (code) → latent → window.

    An overcomplete autoencoder could learn the identity; the denoising objective is what stops it
    (the identity scores the full noise energy), as the seed DAE discussion notes.
    """

    window: int
    latent: int | None = None  # default 2 * window

    def __post_init__(self) -> None:
        w = self.window
        if not isinstance(w, int) or isinstance(w, bool) or w < 2:
            raise ValueError(f"OvercompleteConfig.window must be an integer >= 2, got {w!r}")
        if self.latent is None:
            object.__setattr__(self, "latent", 2 * w)
        lat = self.latent
        if not isinstance(lat, int) or isinstance(lat, bool) or lat <= w:
            raise ValueError(f"OvercompleteConfig.latent must be an integer > window={w}, got {lat!r}")


class OvercompleteDAE(nn.Module):
    def __init__(self, config: OvercompleteConfig):
        super().__init__()
        self.config = config
        w, h = config.window, config.latent
        self.encoder = nn.Sequential(nn.Linear(w, h), nn.ReLU(), nn.Linear(h, h))
        self.decoder = nn.Sequential(nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, w))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_rows(x, self.config.window)
        return self.decode(self.encode(x))


# ------------------------------------------------------------------------------------ conv DAE
@dataclass(frozen=True)
class ConvConfig:
    """1-D convolutional DAE (a U-Net) on single-channel rows.

    ``channels[0]`` is the full-resolution width; each further entry adds a level reached by a
    stride-2 convolution (so the code has ``window / 2**(len(channels)-1)`` positions of
    ``channels[-1]`` features); the decoder mirrors it with stride-2 transposed convolutions.
    ``skip`` feeds each encoder level's features to the decoder at the same resolution: added
    (``concat=False``, the v1 layout) or concatenated and fused (``concat=True``, U-Net proper).
    ``residual`` makes the net predict the noise (output = x − net(x)).
    Windows not divisible by ``2**(levels-1)`` are reflect-padded and cropped back.

    Depth knobs (their defaults are the v1 layout, so v1 checkpoints — whose JSON lacks these keys —
    rebuild exactly): ``stem_convs`` convolutions at full resolution before the first
    down-sampling, ``level_convs`` convolutions per encoder level (the first one strided),
    ``fuse_convs`` convolutions per decoder level after the skip merge, and ``dilations``: one
    kernel-3 convolution per entry at the code's resolution with that dilation (widens the
    receptive field cheaply). ``models.training.CONV_BEST`` is the configuration `dae train` uses.

    ``self_ensemble`` (1, 2 or 4): average the net over symmetric copies of the window — 2: x and
    −x (sign flip, output negated back); 4: also the time-reversed window (output reversed back). A
    fixed, deterministic average (no randomness): the output stays a function of the window alone,
    at 2× or 4× the inference cost; training is unchanged (the copies are just more inputs).
    """

    window: int
    channels: tuple[int, ...] = (16, 32, 64)
    kernel: int = 9
    skip: bool = True
    residual: bool = True  # predict the noise: measured +0.7 dB over predicting the clean window
    concat: bool = False
    stem_convs: int = 1
    level_convs: int = 2
    fuse_convs: int = 1
    dilations: tuple[int, ...] = ()
    self_ensemble: int = 1

    def __post_init__(self) -> None:
        w = self.window
        if not isinstance(w, int) or isinstance(w, bool) or w < 8:
            raise ValueError(f"ConvConfig.window must be an integer >= 8, got {w!r}")
        if self.self_ensemble not in (1, 2, 4) or isinstance(self.self_ensemble, bool):
            raise ValueError(f"ConvConfig.self_ensemble must be 1, 2 or 4, got {self.self_ensemble!r}")
        ch = tuple(self.channels) if isinstance(self.channels, (list, tuple)) else self.channels
        if not isinstance(ch, tuple) or not ch or not all(
            isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in ch
        ):
            raise ValueError(f"ConvConfig.channels must be a non-empty list of positive integers, got {self.channels!r}")
        object.__setattr__(self, "channels", ch)
        if 2 ** (len(ch) - 1) > w:
            raise ValueError(f"ConvConfig: {len(ch)} levels need window >= {2 ** (len(ch) - 1)}, got {w}")
        k = self.kernel
        if not isinstance(k, int) or isinstance(k, bool) or k < 1 or k % 2 == 0:
            raise ValueError(f"ConvConfig.kernel must be an odd positive integer, got {k!r}")
        for name in ("skip", "residual", "concat"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ConvConfig.{name} must be true or false, got {getattr(self, name)!r}")
        for name, lo in (("stem_convs", 1), ("level_convs", 1), ("fuse_convs", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= 8:
                raise ValueError(f"ConvConfig.{name} must be an integer in [{lo}, 8], got {v!r}")
        d = tuple(self.dilations) if isinstance(self.dilations, (list, tuple)) else self.dilations
        if not isinstance(d, tuple) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in d):
            raise ValueError(f"ConvConfig.dilations must be a list of positive integers, got {self.dilations!r}")
        object.__setattr__(self, "dilations", d)


class ConvDAE(nn.Module):
    def __init__(self, config: ConvConfig):
        super().__init__()
        self.config = config
        ch, k = config.channels, config.kernel
        p = k // 2
        act = nn.GELU

        def convs(c_in: int, c_out: int, n: int, stride: int = 1) -> list[nn.Module]:
            out = [nn.Conv1d(c_in, c_out, k, stride=stride, padding=p), act()]
            for _ in range(n - 1):
                out += [nn.Conv1d(c_out, c_out, k, padding=p), act()]
            return out

        self.stem = nn.Sequential(*convs(1, ch[0], config.stem_convs))
        self.down = nn.ModuleList(
            nn.Sequential(*convs(ch[i - 1], ch[i], config.level_convs, stride=2)) for i in range(1, len(ch))
        )
        mid: list[nn.Module] = []
        for d in config.dilations:
            mid += [nn.Conv1d(ch[-1], ch[-1], 3, padding=d, dilation=d), act()]
        self.mid = nn.Sequential(*mid)
        self.up = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose1d(ch[i], ch[i - 1], 4, stride=2, padding=1), act())
            for i in range(len(ch) - 1, 0, -1)
        )
        widen = 2 if (config.skip and config.concat) else 1
        self.fuse = nn.ModuleList(
            nn.Sequential(*convs(widen * ch[i - 1], ch[i - 1], config.fuse_convs)) for i in range(len(ch) - 1, 0, -1)
        )
        self.head = nn.Conv1d(ch[0], 1, k, padding=p)
        self._multiple = 2 ** (len(ch) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_rows(x, self.config.window)
        k = self.config.self_ensemble
        if k == 1 or self.training:
            return self._net(x)
        b = x.shape[0]
        xs = [x, -x] if k == 2 else [x, -x, x.flip(1), -x.flip(1)]
        y = self._net(torch.cat(xs)).reshape(k, b, -1)
        out = y[0] - y[1]
        if k == 4:
            out = out + (y[2] - y[3]).flip(1)
        return out / k

    def _net(self, x: torch.Tensor) -> torch.Tensor:
        w = x.shape[1]
        pad = (-w) % self._multiple
        h = x[:, None, :]
        if pad:
            h = F.pad(h, (0, pad), mode="reflect" if pad < w else "replicate")
        h = self.stem(h)
        feats = [h]
        for down in self.down:
            h = down(h)
            feats.append(h)
        feats.pop()  # the code itself
        h = self.mid(h)
        for up, fuse in zip(self.up, self.fuse):
            h = up(h)
            skip = feats.pop()
            if self.config.skip:
                h = torch.cat((h, skip), dim=1) if self.config.concat else h + skip
            h = fuse(h)
        y = self.head(h)[:, 0, :w]
        return x - y if self.config.residual else y


def _check_rows(x: torch.Tensor, window: int) -> None:
    if x.dim() != 2 or x.shape[1] != window:
        raise ValueError(f"expected input (B, {window}), got {tuple(x.shape)}")


# ------------------------------------------------------------------- noisy-target (Noisier2Noise)
@dataclass(frozen=True)
class Noisier2NoiseConfig:
    """A denoiser ``inner`` trained with the Noisier2Noise objective, plus its inference correction.

    Training (``models.training.losses``) corrupts an already-noisy standardised window y again,
    z = y + sigma·n, and fits f(z) ≈ y. For additive noise of the same law as the data's,
    E[x|z] = 2·E[y|z] − z, so inference returns the mean over ``draws`` fixed draws z_k = y + sigma·n_k
    of 2·f(z_k) − z_k. The n_k are a buffer drawn once from ``seed`` and stored with the weights,
    so the output is a deterministic function of the window (a restarted worker reproduces it).
    """

    window: int
    inner_arch: str = "conv"
    inner: dict | None = None  # the inner architecture's config dict (default: its defaults)
    sigma: float = 0.3  # added noise std, in units of the standardised window (std 1)
    draws: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        w = self.window
        if not isinstance(w, int) or isinstance(w, bool) or w < 2:
            raise ValueError(f"Noisier2NoiseConfig.window must be an integer >= 2, got {w!r}")
        if self.inner_arch not in ARCHITECTURES or self.inner_arch == "noisier2noise":
            raise ValueError(f"Noisier2NoiseConfig.inner_arch: unknown or nested architecture {self.inner_arch!r}")
        inner = dict(self.inner or {})
        if inner.get("window", w) != w:
            raise ValueError(f"Noisier2NoiseConfig: inner window {inner['window']} != window {w}")
        inner["window"] = w
        inner = asdict(make_config(self.inner_arch, inner))  # validated, every field explicit
        object.__setattr__(self, "inner", inner)
        s = float(self.sigma)
        if not (s > 0 and s < 10):
            raise ValueError(f"Noisier2NoiseConfig.sigma must be in (0, 10), got {self.sigma!r}")
        object.__setattr__(self, "sigma", s)
        if not isinstance(self.draws, int) or isinstance(self.draws, bool) or self.draws < 1:
            raise ValueError(f"Noisier2NoiseConfig.draws must be an integer >= 1, got {self.draws!r}")


class Noisier2NoiseDAE(nn.Module):
    """Wrapper: ``forward`` applies the Noisier2Noise correction; ``inner`` is what training fits."""

    def __init__(self, config: Noisier2NoiseConfig):
        super().__init__()
        self.config = config
        self.inner = build_model(config.inner_arch, config.inner)
        g = torch.Generator().manual_seed(int(config.seed))
        self.register_buffer("noise", torch.randn((config.draws, config.window), generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_rows(x, self.config.window)
        b, w = x.shape
        k = self.noise.shape[0]
        z = x[:, None, :] + self.config.sigma * self.noise.to(x.dtype)[None]  # (B, K, W)
        z = z.reshape(b * k, w)
        zn, mean, scale = standardize(z)
        fy = self.inner(zn) * scale + mean  # E[y | z] in the window's units
        return (2.0 * fy - z).reshape(b, k, w).mean(dim=1)


ARCHITECTURES.update(
    {
        "conv": (ConvConfig, ConvDAE),
        "mlp_overcomplete": (OvercompleteConfig, OvercompleteDAE),
        "noisier2noise": (Noisier2NoiseConfig, Noisier2NoiseDAE),
    }
)
