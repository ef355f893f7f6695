"""One tiny smoke case through the whole pipeline on the fast path (issue 12): `intraq run --fast` on this device.

The equality check compares the fast loops with the reference loops; this checks the wiring around them on the
device (batch files, CUDA-graph capture inside the pipeline, checkpoints, the record's path fields).
Writes OUT/pipeline.json: the record's accuracies, paths and seconds, and whether each expectation held.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from intraq.cli import main as intraq_main

TINY = ["teacher.train_epochs=3", "synth.num_images=64", "synth.batch_size=32", "synth.iterations=50",
        "finetune.epochs=6", "finetune.calib_epochs=1", "finetune.iters_per_epoch=20", "finetune.batch_size=32"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True, help="folder for pipeline.json and the run's results/artifacts")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--fast", default="auto", help="capture mode (default auto: cudagraph on CUDA)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    results, artifacts = out / "pipeline-results", out / "pipeline-artifacts"
    command = ["run", "--profile", "smoke", "--quiet", "--device", args.device, "--fast", args.fast,
               "--results", str(results), "--artifacts", str(artifacts)]
    for item in TINY:
        command += ["--set", item]
    code = intraq_main(command)
    records = sorted((results / "smoke").glob("*-seed0.json"))
    summary: dict = {"command": command, "exit_code": code, "records": [str(p) for p in records]}
    if code == 0 and len(records) == 1:
        record = json.loads(records[0].read_text())
        summary.update(accuracy=record["accuracy"], seconds=record["seconds"],
                       finetune_path=record["finetune_path"], batches_by_path=record["synthesis"]["batches_by_path"])
        summary["checks"] = {
            "stage 2 ran on the fast path": isinstance(record["finetune_path"], dict),
            "every batch ran on the fast path": record["synthesis"]["batches_by_path"]["reference"] == 0,
            "no checkpoint left behind": not list((artifacts / "runs").glob("*/finetune*.pt")),
            "accuracy above chance": record["accuracy"]["best_epoch"] > 20.0,
        }
    ok = code == 0 and all(summary.get("checks", {"ran": False}).values())
    summary["ok"] = ok
    out.mkdir(parents=True, exist_ok=True)
    (out / "pipeline.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary.get(k) for k in ("ok", "checks", "seconds")}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
