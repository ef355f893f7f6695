"""The official-run cost measurement (intraq.fast.official_run) runs end to end on the CPU at toy sizes."""

from __future__ import annotations

import pytest
import torch

from intraq.fast.official_run import OFFICIAL, measure_official_run


def test_official_run_measurement_scales_cut_runs_to_full_length():
    m = measure_official_run(2, torch.device("cpu"), "none", kd_epochs=2, iterations=2, iters_per_epoch=2,
                             test_images=16, batch=4, n_images=16)
    gen, ft = m["generation"], m["finetune"]
    assert not m["official_work"]
    assert len(ft["calibration_epochs_s"]) == OFFICIAL["calib_epochs"] and len(ft["kd_epochs_s"]) == 2
    generation = (gen["first_batch_s"] + 19 * gen["steady_batch_s"]) * 1000 / 2
    finetune = (sum(ft["calibration_epochs_s"]) + ft["kd_epochs_s"][0] + 146 * ft["kd_epochs_s"][1]) * 200 / 2
    assert m["full_run_seconds_for_all"] == pytest.approx(generation + finetune)
    assert m["seconds_per_run"] == pytest.approx((generation + finetune) / 2)
    assert "divided by 2 stacked runs" in m["scaling"]
