"""The compiled kernels' cache (pipeline/monitor/alerts/jit.py): keyed by every source file of the package, so
a kernel that calls one from another file never loads machine code compiled from that file's old text."""

import os
import time

from pipeline.monitor.alerts import jit


def test_cache_directory_follows_any_source_file_and_keeps_the_newest(tmp_path):
    src, root = tmp_path / "src", tmp_path / "cache"
    src.mkdir()
    (src / "a.py").write_text("x = 1\n")
    (src / "b.py").write_text("def f():\n    return 1\n")
    first = jit._cache_dir(root, src)
    assert jit._cache_dir(root, src) == first  # the same sources: the same place
    (src / "b.py").write_text("def f():\n    return 2\n")  # a file the kernel's own does not name changed
    second = jit._cache_dir(root, src)
    assert second != first
    made = [second]
    for k in range(jit.KEEP + 2):  # more source versions than are kept: the oldest go
        (src / "a.py").write_text(f"x = {k + 2}\n")
        time.sleep(0.01)
        made.append(jit._cache_dir(root, src))
    left = sorted(os.listdir(root))
    assert len(left) == jit.KEEP
    assert {os.path.basename(p) for p in made[-jit.KEEP:]} == set(left)


def test_kernels_are_cached_in_the_package_cache_directory():
    from pipeline.monitor.alerts import seqstep

    assert seqstep._stream._cache._cache_path.startswith(jit.CACHE_DIR)


_PROBE = """
import numpy as np
from pipeline.monitor.alerts import featpass
featpass._sum(np.arange(4.0))
s = featpass._sum.stats
print(sum(s.cache_hits.values()), sum(s.cache_misses.values()), featpass._sum._cache._cache_path)
"""


def test_a_copy_of_the_package_elsewhere_finds_the_kernels_it_compiled(tmp_path):
    """A fresh clone, a second checkout or another image path holds the same sources at another
    path: numba's own locators filed the machine code under a hash of that path and compiled it
    all again (58 s per CI run here); the package's locator finds it."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    alerts = Path(jit.__file__).parent
    copies = []
    for name in ("a", "b"):
        dst = tmp_path / name / "pipeline"
        shutil.copytree(alerts, dst / "monitor" / "alerts", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(alerts.parent.parent / "__init__.py", dst / "__init__.py")
        shutil.copy(alerts.parent / "__init__.py", dst / "monitor" / "__init__.py")
        copies.append(dst.parent)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("NUMBA_CACHE_LOCATOR_CLASSES", None)
    runs = []
    for root in copies:
        out = subprocess.run([sys.executable, "-c", _PROBE], cwd=root, env={**env, "PYTHONPATH": str(root)},
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        hits, misses, path = out.stdout.split()
        runs.append((int(hits), int(misses), path))
    (h0, m0, p0), (h1, m1, p1) = runs
    assert (h0, m0) == (0, 1) and (h1, m1) == (1, 0), runs  # compiled by the first copy, loaded by the second
    assert p0 == p1 and os.path.basename(p0) == f"alerts-{jit.SOURCES_HASH}"
