"""Several cases' stage 2 stepped together on one device: a ResNet-20 at batch 256 leaves a GPU mostly idle (2% of
an H200's peak for one official run, issue 12), so K cases that share the network and the stage-2 step shape
run their KD fine-tuning as one vmap over K stacked students (`intraq.fast.finetune.finetune_fast`).

Each case opens as it would alone (`pipeline.open_case`: a stored record is reused, other data or another teacher
refused); the group's fresh IntraQ sets of one setting (seeds of one cell) are made together, batch index by batch
index (`_generate_together`); each case then makes (or finds) its image set and student
(`ImageSetMethod.prepare_stage2`, one case after the other, so each draws what it draws alone); then stage 2 runs
for all; then each record is written as alone (`close_case`), its `finetune_path` saying `stacked_runs`. A
stacked run equals the run alone up to float reordering (tests/test_stacking.py). The group's stage-2 checkpoint
lives in `<artifacts>/runs/stack-<hash of its cases in order>/`: the same group resumes it; a case's own
interrupted stage 2 keeps the case out of any group (`stack_groups`). A group that starts removes the checkpoints of
other groups with a member of its own (`members.json` names them): a group whose membership changed (another
`--stack`, a selection of other cases) can never resume, and its state would otherwise stay on disk for good (a
case that runs alone leaves such a folder to the next group that has it). Campaigns that share an artifacts folder
must share their results folder too: the case locks that keep two groups off one case live there.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from intraq.artifacts import load_json, remove_artifact, save_json
from intraq.config import RunConfig, config_hash, to_dict
from intraq.errors import UserInputError
from intraq.fast.finetune import SHARED_FIELDS
from intraq.methods import get_method
from intraq.methods.finetuned import FAST_CHECKPOINT, REFERENCE_CHECKPOINT, ImageSetMethod, stage2_fast_settings
from intraq.pipeline import OpenCase, RunPaths, case_hash, close_case, open_case, sittings_noted, teacher_identity
from intraq.results import RunRecord
from intraq.sitting_wall import total_seconds


def stack_key(cfg: RunConfig) -> str | None:
    """Cases with one key can share a stage 2 (same data, teacher, quantization, image-set size and step shape);
    None: the case's method has no stackable stage 2 (Qimera, SQuant)."""
    method = get_method(cfg.synth.method)
    if not isinstance(method, ImageSetMethod):
        return None
    data = {k: v for k, v in to_dict(cfg.data).items() if k not in ("root", "cache_dir")}
    return config_hash({"data": data, "teacher": to_dict(cfg.teacher), "quant": to_dict(cfg.quant),
                        "images": cfg.synth.num_images,
                        "finetune": {name: getattr(cfg.finetune, name) for name in SHARED_FIELDS}})


def stack_groups(cfgs: Sequence[RunConfig], size: int, paths: RunPaths) -> list[list[RunConfig]]:
    """`cfgs` in order, cut into groups of at most `size` stackable cases (a case joins the first open group of
    its key); a case that cannot stack, or whose own stage-2 checkpoint waits in its run folder (it resumes
    alone), is a group of one."""
    if size < 1:
        raise UserInputError(f"stack size {size} must be at least 1")
    groups: list[list[RunConfig]] = []
    open_groups: dict[str, list[RunConfig]] = {}
    for cfg in cfgs:
        key = stack_key(cfg)
        run_dir = paths.artifacts / "runs" / f"{case_hash(cfg)}-seed{cfg.seed}"
        if key is None or any((run_dir / name).exists() for name in (REFERENCE_CHECKPOINT, FAST_CHECKPOINT)):
            groups.append([cfg])
            continue
        group = open_groups.get(key)
        if group is None or len(group) >= size:
            group = open_groups[key] = []
            groups.append(group)
        group.append(cfg)
    return groups


def run_cases_stacked(
    cfgs: Sequence[RunConfig], paths: RunPaths, device: torch.device, fast: str = "auto", progress: bool = True,
    compile: bool = False, same_machine: bool = False,
) -> list[RunRecord]:
    """Run `cfgs` (one `stack_key`) with one stacked stage 2 on the fast path; their records, in order (stored
    ones are reused and take no part; with `same_machine` only those of this machine class). Stage 2 is the fast
    path's; fresh IntraQ sets of one setting are made together on it, other sets as each case's method makes them
    (`fast` applies where it has a fast generation)."""
    if len({stack_key(cfg) for cfg in cfgs}) > 1 or any(stack_key(cfg) is None for cfg in cfgs):
        raise UserInputError("run_cases_stacked: these cases cannot share a stage 2 (other data, teacher, "
                             "quantization, image count or step shape, or a method without one); group them "
                             "with stack_groups")
    records: list[RunRecord | None] = []
    cases: list[tuple[int, OpenCase]] = []
    for cfg in cfgs:
        opened = open_case(cfg, paths, device, progress, False, compile, fast, same_machine)
        records.append(opened if isinstance(opened, RunRecord) else None)
        if isinstance(opened, OpenCase):
            cases.append((len(records) - 1, opened))
    if not cases:
        return [r for r in records if r is not None]
    for _, case in cases:  # before any image is made: a stage 2 that cannot run on the fast path cannot stack
        if stage2_fast_settings(case.ctx) is None:
            raise UserInputError(f"case {case.name}: stage 2 has no fast path here (see the message above), so it "
                                 "cannot be stacked; run it alone")
    ids = {teacher_identity(c.ctx.teacher.info) for _, c in cases}
    if len(ids) > 1:  # before any image is made with one case's teacher for another
        raise UserInputError(f"the stacked cases load different teachers ({', '.join(map(str, ids))}): one stage 2 "
                             "runs one teacher; run them in separate groups")
    with sittings_noted([c for _, c in cases]):  # an interrupted group: each case notes this sitting
        _generate_together([c for _, c in cases], paths, progress)
        jobs = []
        for _, case in cases:
            jobs.append(case.method.prepare_stage2(case.ctx))  # one case after the other: its draws as alone
        for (index, _), record in zip(cases, _stage2_together([c for _, c in cases], jobs, paths, device, progress),
                                      strict=True):
            records[index] = record
    return [r for r in records if r is not None]


def _generate_together(cases: list[OpenCase], paths: RunPaths, progress: bool) -> None:
    """The IntraQ image sets of the group that have no batch yet, made together on the fast path: per batch index,
    the teacher sees every case's batch at once and each case keeps its own losses, draws and MDC centres
    (`intraq.fast.synthesis.StackedBatchOptimizer`, stacked = alone, tests/test_fast_synthesis.py). Each case's
    batch files are the ones it would write alone, so `prepare_stage2` then finds them finished. A set with any
    batch already (an interrupted one, or made on the reference path) goes on alone."""
    from intraq.synthesis.base import SynthContext
    from intraq.synthesis.intraq import cache_key, set_folder
    from intraq.synthesis.settings import effective_synth_settings

    by_settings: dict[str, list[tuple[OpenCase, Path]]] = {}
    for case in cases:
        ctx = case.ctx
        if ctx.fast is None or case.cfg.synth.method != "intraq":
            continue
        settings = effective_synth_settings(case.cfg, ctx.data.name, "intraq")
        synth_ctx = SynthContext(cfg=case.cfg, teacher=ctx.teacher.model, data=ctx.data, device=ctx.device,
                                 work_dir=paths.artifacts / "synthesis")
        folder = set_folder(synth_ctx.work_dir, "intraq", cache_key(synth_ctx, "intraq", settings), settings.lor)
        if folder.exists() and any(folder.iterdir()):
            continue
        same = config_hash({"settings": settings.to_dict(), "synth": {**to_dict(case.cfg.synth), "seed": None}})
        by_settings.setdefault(same, []).append((case, folder))
    for group in by_settings.values():
        if len(group) > 1:
            _make_sets(group, progress)


def _make_sets(group: list[tuple[OpenCase, Path]], progress: bool) -> None:
    """`generate_stacked` for the group's seeds, each finished batch saved to its case's own set folder."""
    from intraq.fast.synthesis import generate_stacked
    from intraq.synthesis.batches import batch_path, frozen, save_batch
    from intraq.synthesis.settings import effective_synth_settings

    first = group[0][0]
    cfg, ctx = first.cfg, first.ctx
    settings = effective_synth_settings(cfg, ctx.data.name, "intraq")
    teacher, data = ctx.teacher.model, ctx.data
    teacher.to(memory_format=torch.channels_last)  # as `generate` puts it (SynthContext.channels_last)

    def save(run: int, k: int, images: torch.Tensor, labels: torch.Tensor, record: dict) -> None:
        folder = group[run][1]
        folder.mkdir(parents=True, exist_ok=True)
        save_batch(batch_path(folder, k, len(labels)), images, labels, record)

    with frozen(teacher):
        generate_stacked(teacher, settings, [case.cfg.seed for case, _ in group], cfg.synth.num_images,
                         (data.channels, data.image_size, data.image_size), data.num_classes, ctx.device, ctx.fast,
                         progress, on_batch=save)


def _stage2_together(cases: list[OpenCase], jobs: list, paths: RunPaths, device: torch.device,
                     progress: bool) -> list[RunRecord]:
    from intraq.fast.finetune import finetune_fast

    first = cases[0].ctx
    # named by the members in their order: a checkpoint holds one state per run in that order (and checks seeds
    # only), so a group of the same cases in another order must not find it
    members = [f"{c.name}-seed{c.cfg.seed}" for c in cases]
    folder = paths.artifacts / "runs" / f"stack-{config_hash(members)}"
    _remove_stale_groups(folder, members)
    # As finetune_fast prepares the teacher it is given: a run alone is calibrated through that same teacher
    # object (its calibration source holds it), so each case's own teacher gets the same treatment here
    fast = jobs[0].fast
    layout = torch.channels_last if fast.channels_last else torch.contiguous_format
    for case in cases:
        case.ctx.teacher.model.eval().requires_grad_(False).to(device=device, memory_format=layout)
    test_x, test_y = first.data.test.batch(slice(None))
    results = finetune_fast([job.run for job in jobs], first.teacher.model, test_x, test_y, device, fast, progress,
                            checkpoint_path=folder / FAST_CHECKPOINT)
    records = []
    # the group's sittings before this one: the most any member noted (a member may have joined it later)
    group_earlier = max(total_seconds(case.earlier) for case in cases)
    for case, job, result in zip(cases, jobs, results, strict=True):
        outcome = case.method.stage2_outcome(job, result)
        # the group's wall time so far (its first case opened first): a later case's own total is shorter
        outcome.seconds["stack_group_total"] = time.perf_counter() - cases[0].t0 + group_earlier
        records.append(close_case(case, outcome))
    remove_artifact(folder / FAST_CHECKPOINT)
    (folder / "members.json").unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    return records


def _remove_stale_groups(folder: Path, members: list[str]) -> None:
    """Name this group's members in its folder, and remove every other group folder that shares one: their state
    can never resume (a case is in one group at a time, and its campaign lock keeps other runs off it). A folder
    of older code, without `members.json`, is left alone."""
    folder.mkdir(parents=True, exist_ok=True)
    save_json(members, folder / "members.json")
    for other in folder.parent.glob("stack-*"):
        if other == folder or not (other / "members.json").is_file():
            continue
        try:
            theirs = set(load_json(other / "members.json"))
        except (UserInputError, TypeError, ValueError, OSError):  # unreadable: not ours to judge
            continue
        if theirs & set(members):
            shutil.rmtree(other, ignore_errors=True)
