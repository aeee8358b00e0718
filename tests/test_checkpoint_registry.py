"""Checkpoint files (safetensors + JSON, sha256, refusals) and the versioned registry."""

import json
import pickle
import threading
from dataclasses import replace

import pytest
import torch

from models.checkpoint import META, WEIGHTS, CheckpointError, ModelMeta, load_checkpoint, read_meta, save_checkpoint
from models.archs import NORMALISATION, build_model
from models.registry import CURRENT, ModelRegistry, RegistryError


def make(window=32, hidden=16, seed=0):
    torch.manual_seed(seed)
    model = build_model("mlp", {"window": window, "hidden": hidden})
    meta = ModelMeta(
        arch="mlp",
        config={"window": window, "hidden": hidden},
        window=window,
        hop=window // 2,
        sample_rates=[1000.0],
        normalisation=NORMALISATION,
        corruption={"type": "gaussian", "sigma": [0.05, 0.5]},
        training={"data": {"source": "synthetic"}, "steps": 10, "seconds": 0.5, "seed": seed},
        metrics={"val_loss": 0.1, "snr_gain_db": 7.5},
        error_quantiles={"q50": 0.01, "q90": 0.02, "q99": 0.05, "q999": 0.1},
        created="2025-01-01T00:00:00+00:00",
        sha256="",
    )
    return model, meta


# ----------------------------------------------------------------------------- checkpoint
def test_round_trip_is_bit_exact(tmp_path):
    model, meta = make()
    saved = save_checkpoint(tmp_path / "ck", model, meta)
    assert len(saved.sha256) == 64 and saved.format_version == 1
    assert {p.name for p in (tmp_path / "ck").iterdir()} == {WEIGHTS, META}
    loaded, lmeta = load_checkpoint(tmp_path / "ck")
    assert not loaded.training
    assert lmeta == saved
    assert lmeta == replace(meta, sha256=saved.sha256)
    a, b = model.state_dict(), loaded.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k])
    x = torch.randn(4, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))
    assert read_meta(tmp_path / "ck") == saved


def test_weights_are_real_safetensors(tmp_path):
    from safetensors.torch import load_file

    model, meta = make()
    save_checkpoint(tmp_path, model, meta)
    tensors = load_file(str(tmp_path / WEIGHTS))
    assert set(tensors) == set(model.state_dict())
    assert json.loads((tmp_path / META).read_text())["sha256"] == read_meta(tmp_path).sha256


def test_tampered_weights_are_refused(tmp_path):
    model, meta = make()
    save_checkpoint(tmp_path, model, meta)
    data = bytearray((tmp_path / WEIGHTS).read_bytes())
    data[-5] ^= 0x01  # one bit in the last tensor's bytes
    (tmp_path / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="weights sha256 mismatch: expected [0-9a-f]{64}, got [0-9a-f]{64}"):
        load_checkpoint(tmp_path)


def test_half_written_weights_are_refused(tmp_path):
    model, meta = make()
    save_checkpoint(tmp_path, model, meta)
    data = (tmp_path / WEIGHTS).read_bytes()
    (tmp_path / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="tampered or half-written"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("how", ["pickle", "torch_save"])
def test_pickle_in_place_of_weights_is_refused(tmp_path, how):
    model, meta = make()
    save_checkpoint(tmp_path, model, meta)
    if how == "pickle":
        (tmp_path / WEIGHTS).write_bytes(pickle.dumps({"x": 1}))
    else:
        torch.save(model.state_dict(), tmp_path / WEIGHTS)  # zip container, starts with "PK"
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(tmp_path)


def test_pickle_weights_file_instead_of_safetensors_is_refused(tmp_path):
    model, meta = make()
    save_checkpoint(tmp_path, model, meta)
    (tmp_path / WEIGHTS).unlink()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=r"pickle-format weights \(model\.pt\)"):
        load_checkpoint(tmp_path)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    model, meta = make()
    save_checkpoint(tmp_path, model, meta)
    (tmp_path / META).unlink()
    with pytest.raises(CheckpointError, match="no model.json"):
        load_checkpoint(tmp_path)
    (tmp_path / WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_checkpoint(tmp_path)


def _edit_meta(directory, **changes):
    d = json.loads((directory / META).read_text())
    d.update(changes)
    (directory / META).write_text(json.dumps(d))


def test_unknown_arch_is_refused(tmp_path):
    model, meta = make()
    save_checkpoint(tmp_path, model, meta)
    _edit_meta(tmp_path, arch="transformer")
    with pytest.raises(CheckpointError, match="unknown architecture 'transformer'; known: mlp"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="unknown architecture"):
        save_checkpoint(tmp_path / "other", model, replace(meta, arch="transformer"))


def test_shape_mismatch_is_refused(tmp_path):
    model, meta = make(hidden=16)
    save_checkpoint(tmp_path, model, meta)
    _edit_meta(tmp_path, config={"window": 32, "hidden": 24})
    with pytest.raises(CheckpointError, match="shape mismatch .*encoder.0.weight: file \\(16, 32\\) vs model \\(24, 32\\)"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"window": 64}, "disagrees with config window"),
        ({"format_version": 2}, "unsupported format_version 2"),
        ({"hop": 0}, "hop must be"),
        ({"window": "32"}, "'window' must be an integer"),
    ],
)
def test_inconsistent_meta_is_refused(tmp_path, changes, message):
    model, meta = make()
    save_checkpoint(tmp_path, model, meta)
    _edit_meta(tmp_path, **changes)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path)


def test_missing_meta_fields_and_bad_json_are_named(tmp_path):
    model, meta = make()
    save_checkpoint(tmp_path, model, meta)
    d = json.loads((tmp_path / META).read_text())
    del d["sha256"], d["hop"]
    (tmp_path / META).write_text(json.dumps(d))
    with pytest.raises(CheckpointError, match="missing fields: hop, sha256"):
        load_checkpoint(tmp_path)
    (tmp_path / META).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path)


# ----------------------------------------------------------------------------- registry
def test_publish_promote_rollback(tmp_path):
    reg = ModelRegistry(tmp_path)
    assert reg.versions() == [] and reg.current() is None
    with pytest.raises(RegistryError, match="no current version"):
        reg.load()
    models = [make(seed=i) for i in range(3)]
    v1 = reg.publish(*models[0])
    assert v1 == "v1" and reg.current() is None  # publishing alone does not promote
    v2 = reg.publish(*models[1], promote=True)
    v3 = reg.publish(*models[2])
    assert (v2, v3) == ("v2", "v3")
    assert reg.current() == "v2"
    reg.promote("v1")
    reg.promote("v3")
    assert reg.current() == "v3"
    assert json.loads((tmp_path / CURRENT).read_text())["history"] == ["v2", "v1", "v3"]

    model, meta = reg.load()
    assert meta.version == "v3" and reg.meta("v3").version == "v3"
    for a, b in zip(model.state_dict().values(), models[2][0].state_dict().values()):
        assert torch.equal(a, b)

    assert reg.rollback() == "v1" and reg.current() == "v1"
    assert reg.rollback() == "v2" and reg.current() == "v2"
    d = json.loads((tmp_path / CURRENT).read_text())
    assert d == {"current": "v2", "history": ["v2"], "rolled_back": ["v3", "v1"]}
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback()
    assert reg.path("v2") == tmp_path / "versions" / "v2"
    assert reg.load("v1")[1].version == "v1"


def test_versions_sort_numerically_and_names_are_validated(tmp_path):
    reg = ModelRegistry(tmp_path)
    model, meta = make()
    for _ in range(11):
        reg.publish(model, meta)
    assert reg.versions() == [f"v{i}" for i in range(1, 12)]
    for bad in ("../etc", "v0", "V1", "v1/..", "latest"):
        with pytest.raises(RegistryError, match="invalid version name"):
            reg.path(bad)
    with pytest.raises(RegistryError, match="not published"):
        reg.promote("v99")
    with pytest.raises(RegistryError, match="not published"):
        reg.load("v99")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_published_versions_are_immutable(tmp_path):
    reg = ModelRegistry(tmp_path)
    model, meta = make()
    v = reg.publish(model, meta)
    for p in reg.path(v).iterdir():
        assert p.stat().st_mode & 0o222 == 0  # read-only files


def test_concurrent_publishers_get_distinct_versions(tmp_path):
    reg = ModelRegistry(tmp_path)
    model, meta = make()
    got, errors = [], []

    def publish():
        try:
            got.append(ModelRegistry(tmp_path).publish(model, meta))
        except Exception as e:  # pragma: no cover - surfaced below
            errors.append(e)

    threads = [threading.Thread(target=publish) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(got, key=lambda v: int(v[1:])) == [f"v{i}" for i in range(1, 9)]
    for v in got:
        assert reg.load(v)[1].version == v  # each JSON names its own directory


def test_readers_never_see_a_missing_or_partial_current(tmp_path):
    reg = ModelRegistry(tmp_path)
    versions = [reg.publish(*make(seed=i)) for i in range(3)]
    reg.promote(versions[0])
    stop = threading.Event()
    seen, errors, reads = set(), [], [0]

    def reader():
        r = ModelRegistry(tmp_path)
        while not stop.is_set():
            try:
                cur = r.current()
                assert cur in versions, cur
                seen.add(cur)
                raw = (tmp_path / CURRENT).read_text()
                assert json.loads(raw)["current"] in versions
                _, meta = r.load()
                assert meta.version in versions
                reads[0] += 1
            except Exception as e:
                errors.append(e)
                return

    readers = [threading.Thread(target=reader) for _ in range(3)]
    for t in readers:
        t.start()
    # Counts, not a deadline: promote until the readers have read often and seen promotions, however
    # slowly a busy machine schedules them (the bound only stops a broken reader from hanging the test).
    i = 0
    while (i < 20 or reads[0] < 30 or len(seen) < 2) and not errors and i < 200_000:
        reg.promote(versions[i % 3])
        i += 1
    stop.set()
    for t in readers:
        t.join()
    assert not errors, errors[:3]
    assert i >= 20 and reads[0] >= 30 and len(seen) >= 2


def test_garbage_weights_with_matching_hash_are_refused(tmp_path):
    import hashlib

    model, meta = make()
    save_checkpoint(tmp_path, model, meta)
    junk = b"\x10\x00\x00\x00\x00\x00\x00\x00not a header at all"
    (tmp_path / WEIGHTS).write_bytes(junk)
    _edit_meta(tmp_path, sha256=hashlib.sha256(junk).hexdigest())
    with pytest.raises(CheckpointError, match="could not be parsed as safetensors"):
        load_checkpoint(tmp_path)


def test_atomic_write_replaces_whole_files_and_leaves_no_temp_on_failure(tmp_path, monkeypatch):
    import os

    from models.atomic import atomic_write_bytes, atomic_write_text

    target = tmp_path / "f.json"
    atomic_write_text(target, "old\n")
    atomic_write_bytes(target, b"new", sync_dir=True)
    assert target.read_bytes() == b"new"

    def fail(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", fail)  # the rename fails after the temp file is written
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_text(target, "half")
    assert target.read_bytes() == b"new"  # the old content, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]  # no temp file left behind
