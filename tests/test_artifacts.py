"""Every artifact carries its sha256: a damaged or edited file is refused with the fix, never silently used."""

from __future__ import annotations

import struct
import zipfile

import pytest
import torch

from intraq.artifacts import checksum_path, load_torch, recorded_checksums, remove_artifact, save_torch, sha256_of
from intraq.config import apply_overrides
from intraq.errors import UserInputError
from intraq.pipeline import RunPaths, run_case
from intraq.profiles import get_profile


def test_save_writes_the_checksum_and_load_verifies_it(tmp_path):
    path = tmp_path / "a.pt"
    save_torch({"x": torch.arange(10.0)}, path)
    assert recorded_checksums(path) == [sha256_of(path)]
    assert checksum_path(path).read_text() == f"{sha256_of(path)}  a.pt\n"  # sha256sum -c reads it too
    assert torch.equal(load_torch(path)["x"], torch.arange(10.0))

    save_torch({"x": torch.zeros(3)}, path)  # replacing a file leaves only the new checksum
    assert recorded_checksums(path) == [sha256_of(path)]
    assert not list(tmp_path.glob(".*.tmp"))

    blob = bytearray(path.read_bytes())
    blob[-100] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(UserInputError, match=r"a\.pt was damaged or changed after it was written.*delete it"):
        load_torch(path)
    with pytest.raises(UserInputError, match="restore it"):
        load_torch(path, remedy="restore it")

    remove_artifact(path)
    assert not path.exists() and not checksum_path(path).exists()


def test_a_crash_between_the_two_renames_leaves_a_loadable_pair(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    save_torch({"epoch": 1}, path)
    import intraq.artifacts as artifacts

    real_replace, calls = artifacts.os.replace, []

    def crash_on_the_file(src, dst):
        calls.append(dst)
        if str(dst) == str(path):
            raise KeyboardInterrupt  # killed after the checksum file moved, before the file did
        real_replace(src, dst)

    monkeypatch.setattr(artifacts.os, "replace", crash_on_the_file)
    with pytest.raises(KeyboardInterrupt):
        save_torch({"epoch": 2}, path)
    monkeypatch.setattr(artifacts.os, "replace", real_replace)
    assert load_torch(path) == {"epoch": 1}  # the old file is still accepted
    assert len(recorded_checksums(path)) == 2
    save_torch({"epoch": 3}, path)
    assert load_torch(path) == {"epoch": 3} and len(recorded_checksums(path)) == 1


def test_a_file_from_before_checksums_is_accepted_once_with_a_notice(tmp_path, capsys):
    path = tmp_path / "old.pt"
    torch.save({"x": 1}, path)  # as written before this change: no .sha256
    assert load_torch(path) == {"x": 1}
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "recording its sha256" in err
    assert recorded_checksums(path) == [sha256_of(path)]
    assert load_torch(path) == {"x": 1}
    assert capsys.readouterr().err == ""  # checked silently from now on


def test_a_malformed_checksum_file_is_an_error(tmp_path):
    path = tmp_path / "a.pt"
    save_torch({"x": 1}, path)
    checksum_path(path).write_text("not a hash\n")
    with pytest.raises(UserInputError, match=r"a\.pt\.sha256 is not a sha256 checksum file"):
        load_torch(path)


def _flip_tensor_bytes(path, count=400):
    """Flip `count` bytes inside the largest tensor's stored data (torch.save writes uncompressed zip entries)."""
    with zipfile.ZipFile(path) as archive:
        entry = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    assert entry.compress_type == zipfile.ZIP_STORED and entry.file_size > count
    blob = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", blob[entry.header_offset + 26 : entry.header_offset + 30])
    start = entry.header_offset + 30 + name_len + extra_len
    for i in range(start, start + count):
        blob[i] ^= 0x5A
    path.write_bytes(bytes(blob))


def test_a_bit_flipped_synthesis_batch_stops_the_run_and_keeps_the_stored_result(tmp_path, tiny_overrides):
    paths = RunPaths(artifacts=tmp_path / "artifacts", results=tmp_path / "results")
    cfg = apply_overrides(get_profile("smoke"), [*tiny_overrides, "synth.method=intraq"])
    record = run_case(cfg, paths, progress=False)
    stored = paths.results / "smoke" / f"{record['case']}-seed0.json"
    before = stored.read_bytes()
    batches = sorted((paths.artifacts / "synthesis").rglob("batch*.pt"))
    assert batches and all(checksum_path(b).exists() for b in batches)
    target = batches[-1]
    _flip_tensor_bytes(target)
    assert torch.load(target, weights_only=True)["images"].shape[0] > 0  # still loads: only the checksum sees it

    with pytest.raises(UserInputError, match=rf"{target.name} was damaged or changed after it was written"):
        run_case(cfg, paths, progress=False, force=True)
    assert stored.read_bytes() == before
