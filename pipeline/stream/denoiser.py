"""One stream in process, through exactly the worker's path: :class:`StreamWindowing` (windows on
the segment's grid, weighted overlap-add) and an :class:`~pipeline.inference.engine.InferenceEngine`
(the one forward core, ``models.forward.forward_rows``).

:class:`StreamDenoiser` is the worker without Kafka, for one stream (like facebookresearch/denoiser's
``DemucsStreamer``): :meth:`~StreamDenoiser.feed` returns the cleaned samples that are final now,
:meth:`~StreamDenoiser.flush` releases the tail. :func:`denoise_signal` cleans a whole recording
with it; ``dae denoise`` and retraining's scoring use it, so "offline equals streaming" holds by
construction (and ``tests/test_denoise_kafka.py`` checks it against the worker on a real broker).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pipeline.stream.windowing import StreamWindowing, WindowBlock

if TYPE_CHECKING:
    from pipeline.inference.engine import InferenceEngine

# Windows per forward pass: bounds the memory of a long recording. Outputs do not depend on it
# (a window's output does not depend on its batch-mates: models.forward.MIN_ROWS).
BATCH_WINDOWS = 1024


class StreamDenoiser:
    """Feed one stream's frames in chunks of any size; get back its cleaned frames in order.

    Outputs are ``(frames, channels)`` float32, the sample indices continuing from ``start``;
    everything fed comes back once :meth:`flush` has been called.
    """

    def __init__(self, engine: "InferenceEngine", *, channels: int = 1, start: int = 0, hop: int | None = None,
                 batch_windows: int = BATCH_WINDOWS):
        if batch_windows < 1:
            raise ValueError(f"batch_windows must be >= 1, got {batch_windows}")
        self.engine = engine
        self.batch_windows = batch_windows
        self.win = StreamWindowing(engine.window, hop or engine.hop, channels, start)

    @property
    def hop(self) -> int:
        return self.win.hop

    @property
    def index(self) -> int:
        """Sample index of the next cleaned frame to come out."""
        return self.win.emitted_until

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """Append ``samples`` ((frames,) for one channel, or (frames, channels)); returns the
        cleaned frames that became final."""
        return self._run(self.win.feed(samples))

    def flush(self) -> np.ndarray:
        """End of the stream: the remaining cleaned frames (the tail through one padded window)."""
        return self._run(self.win.flush())

    def _run(self, block: WindowBlock | None) -> np.ndarray:
        if block is not None:
            for i in range(0, len(block), self.batch_windows):
                out = self.engine.infer(block.data[i : i + self.batch_windows]).outputs
                self.win.add_output(block.start + i * block.hop, out)
        chunk = self.win.ready()
        if chunk is None:
            return np.empty((0, self.win.channels), np.float32)
        return chunk.samples


def denoise_signal(engine: "InferenceEngine", signal: np.ndarray, *, hop: int | None = None,
                   batch_windows: int = BATCH_WINDOWS) -> np.ndarray:
    """A whole recording, ``(frames,)`` or ``(frames, channels)``, cleaned; shaped like the input."""
    x = np.asarray(signal, dtype=np.float32)
    if x.ndim not in (1, 2):
        raise ValueError(f"expected a (frames,) or (frames, channels) signal, got shape {x.shape}")
    frames = x[:, None] if x.ndim == 1 else x
    d = StreamDenoiser(engine, channels=frames.shape[1], hop=hop, batch_windows=batch_windows)
    piece = batch_windows * d.hop  # about one forward pass of windows per feed
    parts = [d.feed(frames[i : i + piece]) for i in range(0, frames.shape[0], piece)]
    parts.append(d.flush())
    y = np.concatenate(parts)
    if y.shape[0] != frames.shape[0]:  # pragma: no cover - windowing guarantees it
        raise RuntimeError(f"denoised {y.shape[0]} of {frames.shape[0]} frames")
    return y[:, 0] if x.ndim == 1 else y
