"""IntraQ / ADI stage-1 generation: seeding, extension N -> M, resume, MDC masks, settings, ADI student."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import intraq.synthesis.intraq as gen_mod
from intraq.config import RunConfig
from intraq.data.base import DataSplits, Normalization
from intraq.errors import UserInputError
from intraq.synthesis.base import SYNTHESIZERS, SynthContext
from intraq.synthesis.centers import ClassCenters
from intraq.synthesis.intraq import effective_synth_settings, generate
from intraq.teacher.models import build_model

NUM_CLASSES = 3


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest (and least disturbed by other processes) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(num_classes: int = NUM_CLASSES) -> DataSplits:
    return DataSplits("digits", None, None, num_classes, Normalization((0.5,) * 3, (0.25,) * 3), 16)


def _teacher(num_classes: int = NUM_CLASSES, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("digits_cnn", num_classes).eval()


def _cfg(num_images: int = 16, batch_size: int = 8, iterations: int = 6, **synth: object) -> RunConfig:
    cfg = RunConfig()
    cfg.synth.num_images = num_images
    cfg.synth.batch_size = batch_size
    cfg.synth.iterations = iterations
    cfg.synth.margin_low = 0.3  # wide margins so MDC is active in a few iterations
    for key, value in synth.items():
        setattr(cfg.synth, key, value)
    return cfg


def _ctx(cfg: RunConfig, teacher: torch.nn.Module, work: Path, **kw: object) -> SynthContext:
    return SynthContext(
        cfg, teacher, _data(teacher.output.out_features), torch.device("cpu"), work, progress=False, **kw
    )


def test_registered_by_name() -> None:
    assert SYNTHESIZERS.get("intraq") is gen_mod.generate_intraq
    assert SYNTHESIZERS.get("adi") is gen_mod.generate_adi


def test_output_format_and_partial_last_batch(tmp_path: Path) -> None:
    teacher = _teacher()
    out = generate(_ctx(_cfg(num_images=20), teacher, tmp_path))
    assert out.images.shape == (20, 3, 16, 16) and out.images.dtype == torch.float32
    assert out.labels.shape == (20,) and out.labels.dtype == torch.int64
    assert out.labels.min() >= 0 and out.labels.max() < NUM_CLASSES
    meta = out.meta
    assert meta["method"] == "intraq" and meta["seed"] == 0 and meta["num_batches"] == 3
    assert [b["size"] for b in meta["batches"]] == [8, 8, 4]
    assert meta["lor_ops"] == ["crop", "flip"] and meta["rotation_degrees"] == 0.0
    assert len(meta["batch_losses"]) == 3 and {"bns", "target", "mdc_lower", "mdc_upper", "total"} <= set(
        meta["batch_losses"][0]
    )
    assert meta["effective"]["target_pro"] == 0.95 and meta["wall_time_s"] > 0
    # the teacher is handed back as it came
    assert not teacher.training and all(p.requires_grad for p in teacher.parameters())


def test_seeded_reproducibility(tmp_path: Path) -> None:
    cfg = _cfg(lor="L+R+F")
    a = generate(_ctx(cfg, _teacher(), tmp_path / "a"))
    b = generate(_ctx(cfg, _teacher(), tmp_path / "b"))
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.meta["lor_ops"] == ["crop", "rotate", "flip"] and a.meta["rotation_degrees"] == 15.0
    cfg.seed = 1
    c = generate(_ctx(cfg, _teacher(), tmp_path / "c"))
    assert not torch.equal(a.images, c.images)


def test_first_batch_has_no_mdc_and_later_batches_do(tmp_path: Path) -> None:
    out = generate(_ctx(_cfg(num_images=24), _teacher(), tmp_path))
    counts = [b["mdc_images"] for b in out.meta["batches"]]
    assert counts[0] == 0
    assert counts[1] > 0 and counts[2] > 0  # with 3 classes, 8 images of batch 0 cover most classes
    assert out.meta["batch_losses"][0]["mdc_lower"] == 0.0


def test_extension_reuses_first_batches_and_matches_direct_run(tmp_path: Path) -> None:
    teacher = _teacher()
    small = generate(_ctx(_cfg(num_images=16), teacher, tmp_path / "ext"))
    extended = generate(_ctx(_cfg(num_images=32), teacher, tmp_path / "ext"))
    direct = generate(_ctx(_cfg(num_images=32), teacher, tmp_path / "direct"))
    assert extended.meta["reused_batches"] == 2 and direct.meta["reused_batches"] == 0
    assert extended.meta["config_hash"] == small.meta["config_hash"]
    assert torch.equal(extended.images[:16], small.images)
    assert torch.equal(extended.images, direct.images) and torch.equal(extended.labels, direct.labels)
    assert extended.meta["batch_losses"] == direct.meta["batch_losses"]
    assert [b["mdc_images"] for b in extended.meta["batches"]] == [
        b["mdc_images"] for b in direct.meta["batches"]
    ]
    # The centres both runs used for the last batch: the plain means of the first three batches' features.
    centers = ClassCenters(NUM_CLASSES)
    for k in range(3):
        centers.add_images(teacher, direct.images[8 * k : 8 * (k + 1)], direct.labels[8 * k : 8 * (k + 1)])
    used, mask = centers.lookup(direct.labels[24:])
    expected = float((used * mask.unsqueeze(1)).double().sum())
    for run in (extended, direct):
        assert run.meta["batches"][3]["center_checksum"] == pytest.approx(expected, rel=1e-6)


def test_partial_batch_is_regenerated_full_size_on_extension(tmp_path: Path) -> None:
    teacher = _teacher()
    generate(_ctx(_cfg(num_images=12), teacher, tmp_path))  # batches of 8 and 4
    extended = generate(_ctx(_cfg(num_images=16), teacher, tmp_path))
    assert extended.meta["reused_batches"] == 1
    direct = generate(_ctx(_cfg(num_images=16), teacher, tmp_path / "direct"))
    assert torch.equal(extended.images, direct.images)


def test_resume_after_interruption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    teacher = _teacher()
    cfg = _cfg(num_images=32)
    original = gen_mod._optimize_batch

    def crash_after_batch_one(ctx, settings, index, *args, **kwargs):
        if index >= 2:
            raise KeyboardInterrupt("simulated interruption")
        return original(ctx, settings, index, *args, **kwargs)

    monkeypatch.setattr(gen_mod, "_optimize_batch", crash_after_batch_one)
    with pytest.raises(KeyboardInterrupt):
        generate(_ctx(cfg, teacher, tmp_path / "run"))
    monkeypatch.setattr(gen_mod, "_optimize_batch", original)
    assert not teacher.training and all(p.requires_grad for p in teacher.parameters())
    resumed = generate(_ctx(cfg, teacher, tmp_path / "run"))
    direct = generate(_ctx(cfg, teacher, tmp_path / "direct"))
    assert resumed.meta["reused_batches"] == 2
    assert torch.equal(resumed.images, direct.images) and torch.equal(resumed.labels, direct.labels)


def test_changed_settings_or_teacher_do_not_reuse_batches(tmp_path: Path) -> None:
    first = generate(_ctx(_cfg(), _teacher(), tmp_path))
    other_lor = generate(_ctx(_cfg(lor="L"), _teacher(), tmp_path))
    other_teacher = generate(_ctx(_cfg(), _teacher(seed=5), tmp_path))
    assert other_lor.meta["reused_batches"] == 0 and other_teacher.meta["reused_batches"] == 0
    assert (
        len({first.meta["config_hash"], other_lor.meta["config_hash"], other_teacher.meta["config_hash"]})
        == 3
    )


def test_effective_settings_per_variant() -> None:
    cfg = _cfg()
    paper = effective_synth_settings(cfg, "imagenet")
    assert (paper.target_pro, paper.margin_low, paper.margin_up) == (0.95, 0.3, 0.8)
    cfg.synth.variant = "official-script"
    imagenet = effective_synth_settings(cfg, "imagenet")
    assert (imagenet.target_pro, imagenet.margin_low, imagenet.margin_up) == (1.0, 0.0, 2.0)
    assert imagenet.mdc_inert and imagenet.sil_inert
    assert effective_synth_settings(cfg, "cifar100").target_pro == 0.6
    digits = effective_synth_settings(cfg, "digits")
    assert (digits.target_pro, digits.margin_low, digits.margin_up) == (0.95, 0.05, 0.8)
    with pytest.raises(UserInputError):
        effective_synth_settings(cfg, "svhn")
    cfg.synth.variant = "paper"
    cfg.synth.mdc = False
    assert not effective_synth_settings(cfg, "digits").mdc
    assert not effective_synth_settings(_cfg(), "digits", method="adi").mdc
    cfg.synth.lor = "L+X"
    with pytest.raises(UserInputError):
        effective_synth_settings(cfg, "digits")


def test_mdc_off_and_ce_ablations_run(tmp_path: Path) -> None:
    out = generate(_ctx(_cfg(mdc=False, target_loss="ce", lor="none"), _teacher(), tmp_path))
    assert "mdc_lower" not in out.meta["batch_losses"][1]
    assert out.meta["lor_ops"] == [] and all(b["lor_iterations"] == 0 for b in out.meta["batches"])


def test_adi_needs_a_student(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="student"):
        generate(_ctx(_cfg(method="adi"), _teacher(), tmp_path))
    teacher = _teacher()
    with pytest.raises(ValueError, match="shares"):
        generate(_ctx(_cfg(method="adi"), teacher, tmp_path, student=teacher))


def test_adi_runs_with_frozen_student_and_records_it(tmp_path: Path) -> None:
    student = _teacher(seed=1).train()
    out = SYNTHESIZERS.get("adi")(_ctx(_cfg(method="adi"), _teacher(), tmp_path, student=student))
    assert out.meta["method"] == "adi" and out.meta["adi_student"] == "quantized"
    losses = out.meta["batch_losses"][1]
    assert "adi" in losses and "mdc_lower" not in losses
    assert 0.0 <= losses["adi"] <= 0.2 + 1e-6
    assert student.training and all(p.requires_grad for p in student.parameters())  # restored


def test_progress_bar_does_not_break(tmp_path: Path) -> None:
    ctx = _ctx(_cfg(num_images=8, iterations=3), _teacher(), tmp_path)
    ctx.progress = True
    assert len(generate(ctx)) == 8


def _trained_digits_teacher() -> tuple[torch.nn.Module, DataSplits]:
    """digits_cnn after four quick epochs on the embedded digits (a random-init net ignores its input)."""
    from intraq.config import DataConfig
    from intraq.data.digits import build_digits

    data = build_digits(DataConfig())
    torch.manual_seed(0)
    model = build_model("digits_cnn", data.num_classes)
    images, labels = data.train.batch(slice(None))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(4):
        order = torch.randperm(len(images))
        for start in range(0, len(images), 64):
            idx = order[start : start + 64]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(images[idx]), labels[idx]).backward()
            optimizer.step()
    return model.eval(), data


def test_images_are_classified_as_their_labels(tmp_path: Path) -> None:
    teacher, data = _trained_digits_teacher()
    test_images, test_labels = data.test.batch(slice(None))
    with torch.no_grad():
        assert (teacher(test_images).argmax(1) == test_labels).float().mean() > 0.7
    cfg = _cfg(num_images=32, batch_size=32, iterations=60)
    out = generate(SynthContext(cfg, teacher, data, torch.device("cpu"), tmp_path, progress=False))
    with torch.no_grad():
        accuracy = (teacher(out.images).argmax(1) == out.labels).float().mean().item()
    assert accuracy >= 0.6  # chance is 0.1


def test_sets_of_older_code_are_never_reused(tmp_path) -> None:
    """A set made before the LOR fix has the same settings (same cache key) but other images: its folder has no
    version, so a new run makes its own set instead of reusing it."""
    from intraq.synthesis.intraq import SET_VERSION

    first = generate(_ctx(_cfg(), _teacher(), tmp_path))
    (folder,) = [p for p in tmp_path.rglob(f"intraq-{SET_VERSION}-*") if p.is_dir()]
    folder.rename(folder.with_name(folder.name.replace(f"-{SET_VERSION}-", "-")))
    again = generate(_ctx(_cfg(), _teacher(), tmp_path))
    assert again.meta["reused_batches"] == 0 and first.meta["reused_batches"] == 0
    assert generate(_ctx(_cfg(), _teacher(), tmp_path)).meta["reused_batches"] == again.meta["num_batches"]
