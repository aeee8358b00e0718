"""matplotlib for the commands that draw (demo, evaluate, evaluate-alerts): an optional extra.

The worker and its images do not carry matplotlib; ``pip install 'dae-stream[plot]'`` adds it.
"""

from __future__ import annotations


class PlottingUnavailable(RuntimeError):
    pass


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend, or a clear error saying how to get it."""
    try:
        import matplotlib
    except ImportError as exc:
        raise PlottingUnavailable(
            "plots need matplotlib, which is not installed: pip install 'dae-stream[plot]'"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
