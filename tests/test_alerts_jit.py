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
