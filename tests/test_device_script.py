"""The prepared device script (bench/device/check.sh) and its equality check run their CPU parts here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from intraq.fast.device_check import verdicts

ROOT = Path(__file__).resolve().parents[1]


def test_device_script_dry_run_writes_its_records(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "bench/device/check.sh"), "--dry-run", str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=900)
    out = tmp_path / "out"
    summary = (out / "summary.txt").read_text()
    assert proc.returncode == 0, summary + proc.stdout[-2000:] + proc.stderr[-2000:]
    assert [line.split()[:2] for line in summary.splitlines()] == [["env", "ok"], ["equality", "ok"],
                                                                   ["throughput", "ok"], ["pipeline", "ok"]]
    env_record = json.loads((out / "env.json").read_text())
    assert "allow_tf32_cudnn" in env_record["numeric"]
    equality = json.loads((out / "equality.json").read_text())
    assert equality["verdicts"] == {"finetune-none": True, "stacked": True, "calibration-none": True}
    assert equality["calibration"]["none"]["max_rel_range_gap"] == 0.0  # the same arithmetic on the CPU
    pipeline = json.loads((out / "pipeline.json").read_text())
    assert pipeline["ok"] and pipeline["finetune_path"]["fast"]["capture"] == "none"


def test_device_script_keeps_going_and_reports_a_failed_step(tmp_path):
    env = {**os.environ, "PYTHON": "false"}  # every python step fails at once
    proc = subprocess.run(["bash", str(ROOT / "bench/device/check.sh"), "--dry-run", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = (tmp_path / "summary.txt").read_text().splitlines()
    assert [line.split()[:2] for line in lines] == [["env", "failed"], ["equality", "failed"],
                                                    ["throughput", "failed"], ["pipeline", "failed"]]


def test_device_script_needs_an_output_folder():
    proc = subprocess.run(["bash", str(ROOT / "bench/device/check.sh")], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "usage" in proc.stderr


@pytest.mark.parametrize("gap,ok", [(1e-4, True), (5e-2, False)])
def test_equality_verdicts_follow_the_tolerances(gap, ok):
    report = {"finetune": {"none": {"max_rel_loss_gap": gap, "max_acc_gap_points": 0.0}, "compile": {"error": "x"}}}
    assert verdicts(report, loose=False) == {"finetune-none": ok, "finetune-compile": False}


def test_teacher_script_dry_run_trains_and_hands_back_the_checkpoint(tmp_path):
    # the default weight decay (1e-4, not the recipe's 5e-4) names its own checkpoint
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env.pop("TEACHER_WD", None)
    script = str(ROOT / "bench/device/teacher.sh")
    proc = subprocess.run(["bash", script, "--dry-run", str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = (tmp_path / "summary.txt").read_text().splitlines()
    assert summary[0] == "teacher finished"
    assert summary[1].startswith("real images: sharpness ") and "x bound" in summary[1], proc.stdout[-2000:]
    (probe,) = (tmp_path / "finetune-probe").glob("*.json")
    assert json.loads(probe.read_text())["sharpness"]["top_eigenvalue"] > 0
    sidecar = json.loads((tmp_path / "digits_cnn-digits-e2-wd1e-4.json").read_text())
    assert sidecar["recipe"]["train_epochs"] == 2 and sidecar["torch"] and "test_top1" in sidecar
    assert sidecar["recipe"]["train_weight_decay"] == 1e-4
    assert [s["channels_last"] for s in sidecar["sittings"]] == [True]
    again = subprocess.run(["bash", script, "--dry-run", str(tmp_path)], env=env, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0 and "already finished" in (tmp_path / "summary.txt").read_text()
    # the recipe's own weight decay: the recipe's name (the probe is not repeated into a folder that has one)
    env["TEACHER_WD"] = "5e-4"
    recipe = subprocess.run(["bash", script, "--dry-run", str(tmp_path)], env=env, capture_output=True, text=True,
                            timeout=300)
    assert recipe.returncode == 0 and (tmp_path / "summary.txt").read_text() == "teacher finished\n"
    assert json.loads((tmp_path / "digits_cnn-digits-e2.json").read_text())["recipe"]["train_weight_decay"] == 5e-4


def test_teacher_script_needs_data_on_the_device(tmp_path):
    env = {**os.environ, "TEACHER_EPOCHS": "200", "TEACHER_WD": "5e-4"}  # a teacher not committed yet
    proc = subprocess.run(["bash", str(ROOT / "bench/device/teacher.sh"), str(tmp_path / "nope.tar.gz"),
                           str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "no CIFAR-10 data" in proc.stderr


def test_check_script_runs_only_the_steps_named(tmp_path):
    env = {**os.environ, "PYTHON": "false", "CHECK_STEPS": "env,pipeline"}
    proc = subprocess.run(["bash", str(ROOT / "bench/device/check.sh"), "--dry-run", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = (tmp_path / "summary.txt").read_text().splitlines()
    assert [line.split()[:2] for line in lines] == [["env", "failed"], ["pipeline", "failed"]]


def test_session_script_packs_every_part_and_reports_failures(tmp_path):
    # every python step fails at once: the session still runs each part, packs them and exits 1
    env = {**os.environ, "PYTHON": "false", "SESSION_MEASURE_SECONDS": "30"}
    proc = subprocess.run(["bash", str(ROOT / "bench/device/session.sh"), "--dry-run", str(tmp_path), "300"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["session.tar.gz", "summary.txt"]
    summary = (tmp_path / "summary.txt").read_text()
    assert "== check-env\nenv failed" in summary and "== check\nequality failed" in summary
    assert "== campaign\ncampaign smoke: rc=1" in summary and "== check-timed\nthroughput failed" in summary
    assert summary.rstrip().endswith("of 300s")
    with tarfile.open(tmp_path / "session.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"./check-env/summary.txt", "./check/summary.txt", "./campaign/summary.txt",
            "./check-timed/summary.txt"} <= names


def test_session_script_leaves_the_untimed_parts_out_when_time_is_short(tmp_path):
    env = {**os.environ, "PYTHON": "false"}
    proc = subprocess.run(["bash", str(ROOT / "bench/device/session.sh"), "--dry-run", str(tmp_path), "100"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    summary = (tmp_path / "summary.txt").read_text()
    assert "no time left for the campaign" in summary and "== campaign\n(no summary" in summary
    assert "check-timed" not in summary  # no measurement asked for


def test_teacher_script_leaves_a_committed_teacher_alone(tmp_path):
    # the 160-epoch weight-decay-1e-4 teacher is committed under teachers/: a lent GPU must not train it again
    assert (ROOT / "teachers/resnet20-cifar10-e160-wd1e-4.json").is_file()
    data = tmp_path / "cifar10-jpeg.tar.gz"  # absent: a committed teacher needs no data carried along
    env = {k: v for k, v in os.environ.items() if k not in ("TEACHER_WD", "TEACHER_EPOCHS")}
    proc = subprocess.run(["bash", str(ROOT / "bench/device/teacher.sh"), str(data), str(tmp_path / "out")],
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out/summary.txt").read_text().startswith("teacher already committed: teachers/")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["summary.txt"]


def test_strict_equality_check_turns_tf32_off_for_both_paths(tmp_path):
    # its own process: the check sets torch's process-wide backend flags
    proc = subprocess.run([sys.executable, "-m", "intraq.fast.device_check", "--out", str(tmp_path / "eq.json"),
                           "--device", "cpu", "--only", "calibration", "--calibration-steps", "2", "--strict"],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    report = json.loads((tmp_path / "eq.json").read_text())
    assert proc.returncode == 0 and report["verdicts"] == {"calibration-none": True}, proc.stderr[-2000:]
    assert not report["numeric"]["allow_tf32_cudnn"] and not report["numeric"]["allow_tf32_matmul"]


@pytest.mark.parametrize("stack", [1, 3])
def test_campaign_script_dry_run_packs_the_records_it_made(tmp_path, stack):
    # tiny smoke cases on the fast path (what a lent GPU runs at cifar10-lr1e-5), packed for the repository: one at
    # a time through pytest bench, or three with one stacked stage 2 through `intraq campaign --stack`
    select = "comparison-real-" if stack == 1 else "comparison-real comparison-intraq"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "CAMPAIGN_SEEDS": "2",
           "CAMPAIGN_SELECT": select, "CAMPAIGN_STACK": str(stack)}
    proc = subprocess.run(["bash", str(ROOT / "bench/device/campaign.sh"), "--dry-run", str(tmp_path), "240"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with tarfile.open(tmp_path / "campaign.tar.gz") as tar:
        names = set(tar.getnames())
    records = sorted(n for n in names if n.startswith("smoke/") and n.count("/") == 1 and n.endswith(".json"))
    assert len(records) == (2 if stack == 1 else 4) and not any(".campaign" in n for n in names)
    assert "smoke/cells/comparison--real-seed1.json" in names
    summary = (tmp_path / "summary.txt").read_text()
    assert summary.startswith(f"campaign smoke: rc=0 (stack {stack})")
    assert all(f"{r}: " in summary for r in records)
    assert summary.count("stage 2 on the fast path, capture none, 1 stacked") == (2 if stack == 1 else 1)
    assert summary.count("capture none, 3 stacked") == (0 if stack == 1 else 3)


def test_campaign_script_needs_data_and_time(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "bench/device/campaign.sh"), str(tmp_path / "nope.tar.gz"),
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "no CIFAR-10 data" in proc.stderr
    env = {**os.environ, "PYTHON": "false"}
    short = subprocess.run(["bash", str(ROOT / "bench/device/campaign.sh"), "--dry-run", str(tmp_path), "60"],
                           env=env, capture_output=True, text=True, timeout=30)
    assert short.returncode == 1 and "no time left" in (tmp_path / "summary.txt").read_text()


def test_campaign_script_falls_back_to_one_case_at_a_time_when_stacking_fails(tmp_path):
    # a python that fails `intraq campaign` (as an untried stacking might on a new device) and runs the rest
    python = tmp_path / "python"
    python.write_text(f'#!/usr/bin/env bash\n[[ " $* " == *" campaign "* ]] && exit 1\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    env = {**os.environ, "PYTHON": str(python), "OMP_NUM_THREADS": "1", "CAMPAIGN_SEEDS": "1",
           "CAMPAIGN_SELECT": "comparison-real", "CAMPAIGN_STACK": "2"}
    proc = subprocess.run(["bash", str(ROOT / "bench/device/campaign.sh"), "--dry-run", str(tmp_path / "out"),
                           "240"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "stacked campaign failed (rc=1); one case at a time" in summary
    assert "real, best epoch" in summary and "1 stacked" in summary


def test_campaign_script_reruns_a_record_of_another_machine_and_packs_both(tmp_path):
    # what a lent GPU does with a CPU record of the same cell (claims compare cells on one machine class only)
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "CAMPAIGN_SEEDS": "1",
           "CAMPAIGN_SELECT": "comparison-real-"}
    script = ["bash", str(ROOT / "bench/device/campaign.sh"), "--dry-run", str(tmp_path), "240"]
    first = subprocess.run(script, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    [record] = (tmp_path / "dry-run-results" / "smoke").glob("*-seed0.json")
    blob = json.loads(record.read_text())
    blob["machine"] = {**blob["machine"], "device": "cuda:0", "gpu": "Imagined GPU", "torch": "0.0"}
    record.write_text(json.dumps(blob))
    again = subprocess.run(script, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert json.loads(record.read_text())["machine"]["device"] == "cpu"
    with tarfile.open(tmp_path / "campaign.tar.gz") as tar:
        names = set(tar.getnames())
    kept = f"smoke/other-machines/imagined-gpu-torch-0.0/{record.name}"
    assert f"smoke/{record.name}" in names and kept in names
    assert "another machine class, replaced by this class's run" in (tmp_path / "summary.txt").read_text()
    blob = {**json.loads(record.read_text()), "machine": blob["machine"]}
    record.write_text(json.dumps(blob))
    reused = subprocess.run(script, env={**env, "CAMPAIGN_SAME_MACHINE": "0"}, capture_output=True, text=True,
                            timeout=600)
    assert reused.returncode == 0 and json.loads(record.read_text()) == blob  # opted out: any class is reused
