"""The official-trainer harness (bench/official_stage2.py): its input adapters, without an official checkout."""

from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("official_stage2", ROOT / "bench" / "official_stage2.py")
harness = importlib.util.module_from_spec(spec)
spec.loader.exec_module(harness)


def test_read_hocon_reads_the_flat_settings(tmp_path):
    (tmp_path / "c.hocon").write_text(
        '#  ---- General ----\nsave_path = "./save/"\nnEpochs = 151  # total 400\nlr_S = 0.0001 # initial\n'
        "step_S = [20,40,60]  # steps\nopt_type = \"SGD\"\n\n")
    assert harness.read_hocon(tmp_path / "c.hocon") == {
        "save_path": "./save/", "nEpochs": 151, "lr_S": 1e-4, "step_S": [20, 40, 60], "opt_type": "SGD"}


def _batches(folder: Path, n: int, size: int = 3) -> list[dict]:
    batches = []
    for i in range(n):
        batch = {"images": torch.randn(size, 3, 4, 4), "labels": torch.randint(10, (size,))}
        torch.save(batch, folder / f"batch{i:05d}-n{size}.pt")
        batches.append(batch)
    return batches


def _read_groups(scratch: Path, kind: str) -> torch.Tensor:
    parts = []
    for group in range(4):
        with open(scratch / f"Path_to_{kind}_pickle{group + 1}.pickle", "rb") as fp:
            parts += [torch.from_numpy(a) for a in pickle.load(fp)]
    return torch.cat(parts)


@pytest.mark.parametrize("n_batches", [8, 1])
def test_batches_become_the_four_group_pickles_in_order(tmp_path, n_batches):
    images, scratch = tmp_path / "images", tmp_path / "scratch"
    images.mkdir(), scratch.mkdir()
    batches = _batches(images, n_batches, size=6)
    assert harness.write_official_pickles(images, 4, scratch) == n_batches
    assert torch.equal(_read_groups(scratch, "data"), torch.cat([b["images"] for b in batches]))
    assert torch.equal(_read_groups(scratch, "label"), torch.cat([b["labels"] for b in batches]))


def test_too_few_images_for_the_groups_are_refused(tmp_path):
    _batches(tmp_path, 1, size=3)
    with pytest.raises(SystemExit, match="fewer than the 4 official groups"):
        harness.write_official_pickles(tmp_path, 4, tmp_path)
    with pytest.raises(SystemExit, match="no batch files"):
        harness.write_official_pickles(tmp_path / "empty", 4, tmp_path)


def test_a_folder_that_is_not_the_official_checkout_is_refused_before_anything_is_patched(tmp_path):
    cuda = torch.Tensor.cuda
    with pytest.raises(SystemExit, match="zysxmu/IntraQ"):
        harness.import_official(tmp_path)
    assert torch.Tensor.cuda is cuda


synth_spec = importlib.util.spec_from_file_location("official_synthesis", ROOT / "bench" / "official_synthesis.py")
synthesis_harness = importlib.util.module_from_spec(synth_spec)
synth_spec.loader.exec_module(synthesis_harness)


def test_the_official_per_iteration_print_is_parsed_and_other_lines_are_not():
    line = ("0 999 lr 0.0001 d_acc 1.0 mean_loss 0.0021 var_loss 0.0040 loss_target 0.0002 loss_cosineDistance 0.0 "
            "loss_cosineDistance_upper 0.0")
    assert synthesis_harness.parse_iteration(line) == (0, 999, {
        "lr": 1e-4, "d_acc": 1.0, "mean_loss": 0.0021, "var_loss": 0.004, "loss_target": 0.0002,
        "loss_cosineDistance": 0.0, "loss_cosineDistance_upper": 0.0})
    for other in ("number of 1 in mask tensor(0.) old_features.shape torch.Size([256, 64])", "d_acc 1.0", "0.984375"):
        assert synthesis_harness.parse_iteration(other) is None


def test_the_loss_tap_keeps_each_batchs_last_iteration_across_split_writes(capsys):
    tap = synthesis_harness.LossTap(iterations=2)
    tap.write("0 0 lr 0.5 d_acc 0.1 mean_loss 3.0\n0 1 lr 0.5 d_")
    tap.write("acc 0.2 mean_loss 2.0\nsomething else\n1 0 lr 0.5 d_acc 0.3 mean_loss 1.0\n")
    assert tap.last == {0: {"iteration": 1, "lr": 0.5, "d_acc": 0.2, "mean_loss": 2.0},
                        1: {"iteration": 0, "lr": 0.5, "d_acc": 0.3, "mean_loss": 1.0}}
