"""Benchmarks: the statistics on known inputs, the targets logic, and a --quick run on a real
(small) exported model with one artifact missing."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from benchmarks.__main__ import main, thread_list
from benchmarks.report import targets
from benchmarks.stats import percentile, summarize, throughput
from export.latency import measure


def test_percentiles_interpolate_between_order_statistics():
    seconds = [i / 1000 for i in range(1, 101)]  # 1..100 ms, shuffled below
    rng = np.random.default_rng(0)
    shuffled = list(rng.permutation(seconds))
    assert percentile(shuffled, 50) == pytest.approx(0.0505)
    assert percentile(shuffled, 90) == pytest.approx(0.0901)
    assert percentile(shuffled, 99) == pytest.approx(0.09901)
    assert percentile([0.007], 99) == pytest.approx(0.007)
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile(seconds, 101)


def test_throughput_counts_every_image_over_total_time():
    assert throughput(8, [0.1, 0.1, 0.2, 0.2]) == pytest.approx(32 / 0.6)
    assert throughput(1, [0.001] * 1000) == pytest.approx(1000)
    with pytest.raises(ValueError):
        throughput(1, [0.0, 0.0])
    summary = summarize(4, [0.002, 0.004])
    assert summary["p50_ms"] == pytest.approx(3.0)
    assert summary["min_ms"] == pytest.approx(2.0)
    assert summary["throughput_ips"] == pytest.approx(8 / 0.006)
    assert summary["iterations"] == 2


def test_measure_warms_up_and_honours_the_iteration_bounds():
    calls = []
    timings = measure(lambda: calls.append(1), budget_s=0.0, warmup=2, min_iterations=7)
    assert len(timings) == 7 and len(calls) == 9  # warm-up calls are not timed
    assert all(t >= 0 for t in timings)
    assert len(measure(lambda: None, budget_s=10.0, warmup=0, min_iterations=1, max_iterations=50)) == 50


def test_thread_list_resolves_all_and_drops_duplicates(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert thread_list("1,all") == [1, 4]
    assert thread_list("4,all") == [4]
    with pytest.raises(Exception, match="thread counts"):
        thread_list("0,x")


def _cell(key: str, p50_ms: float) -> dict:
    return {"key": key, "threads": 1, "batch": 1, "p50_ms": p50_ms}


def test_targets_report_met_missed_and_not_measured():
    result = {
        "dataset": "cifar10",
        "config": {"threads": [1]},
        "cells": [
            _cell("ort_int8", 0.20),
            _cell("ort_bare_int8", 0.19),
            _cell("litert_int8", 0.25),
            _cell("keras_predict", 10.0),
        ],
        "models": {
            "ort_int8": {"bytes": 40},
            "ort_fp32": {"bytes": 100},
        },
        "cold_start": {"classify": {"median_s": 0.3}, "import tensorflow": {"median_s": 3.0}},
        "machine": {"cores": 2},
        "busy": [_cell("ort_int8", 0.30), {**_cell("ort_int8", 0.50), "threads": 2}],
    }
    by_name = {row["target"]: row for row in targets(result)}
    ort_vs_litert = by_name["ORT int8 vs LiteRT int8 latency (batch 1, 1 thread(s))"]
    assert ort_vs_litert["value"] == pytest.approx(0.8) and ort_vs_litert["met"] is True
    assert ort_vs_litert["goal"] == "<= 1.1x"  # CIFAR-10's; Fashion-MNIST's is 1.3x
    result["cells"][2] = _cell("litert_int8", 0.17)
    assert {row["target"]: row for row in targets(result)}[ort_vs_litert["target"]]["met"] is False
    overhead = by_name["runtime overhead over a bare session (batch 1, 1 thread(s))"]
    assert overhead["value"] == pytest.approx(10.0) and overhead["met"] is True
    speedup = by_name["runtime speed-up over Keras predict (batch 1, 1 thread(s))"]
    assert speedup["value"] == pytest.approx(50.0) and speedup["met"] is False
    assert by_name["ONNX int8 file size vs fp32"]["met"] is False  # 0.4 > 0.3
    assert by_name["TFLite int8 file size vs fp32"]["met"] is None
    assert by_name["classify cold start (median)"]["met"] is True
    assert by_name["classify cold start vs import tensorflow"]["value"] == pytest.approx(0.1)
    busy = by_name["runtime default (all cores) vs one thread, batch 1 beside a busy neighbour"]
    assert busy["value"] == pytest.approx(0.5 / 0.3) and busy["met"] is False


def test_quick_run_writes_reports_and_skips_a_missing_artifact(exported_models, small_data_dir, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(exported_models / "fashion_mnist", models / "fashion_mnist")
    (models / "fashion_mnist" / "model_fp16.tflite").unlink()
    out = tmp_path / "reports"

    assert main(["--models-dir", str(models), "--quick", "--out", str(out), "--data-dir", str(small_data_dir)]) == 0

    result = json.loads((out / "bench-fashion_mnist.json").read_text())
    keys = {cell["key"] for cell in result["cells"]}
    assert "litert_fp16" not in keys
    assert keys == {
        "keras_predict",
        "keras_call",
        "litert_fp32",
        "litert_dynamic",
        "litert_int8",
        "ort_fp32",
        "ort_int8",
        "ort_bare_fp32",
        "ort_bare_int8",
        "tflm_int8",  # the baseline CNN fits a microcontroller: its export has the TFLite Micro artifact
    }
    assert any("model_fp16.tflite" in note for note in result["skipped"])
    assert not result["failures"]
    assert len(result["cells"]) == len(keys) * 2  # --quick: batch sizes 1 and 8, one thread setting
    # batch 1 again while all cores but one are kept busy, for every contender
    assert {cell["key"] for cell in result["busy"]} == keys and {cell["batch"] for cell in result["busy"]} == {1}
    assert result["neighbours"] == max(1, (os.cpu_count() or 1) - 1)
    for cell in result["cells"]:
        assert 0 < cell["min_ms"] <= cell["p50_ms"] <= cell["p90_ms"] <= cell["p99_ms"]
        assert cell["throughput_ips"] > 0 and cell["iterations"] >= 3
    for model in result["models"].values():
        assert model["bytes"] == (models / "fashion_mnist" / model["file"]).stat().st_size
        assert model["load_s"] > 0 and model["peak_rss_mib"] > 10
    assert result["models"]["keras_call"]["peak_rss_mib"] > result["models"]["ort_int8"]["peak_rss_mib"]
    assert result["cold_start"]["classify"]["median_s"] > 0
    folder = result["folder"]  # real test images classified as a folder, 1 worker and every core
    assert folder["images"] == 200 and "1" in folder["workers"]
    assert all(figures["best_ips"] > 0 for figures in folder["workers"].values())
    assert result["machine"]["cores"] >= 1 and "onnxruntime" in result["versions"]
    assert {row["target"] for row in result["targets"]} >= {"classify cold start (median)"}

    text = (out / "bench-fashion_mnist.md").read_text()
    assert "## Targets" in text and "ORT int8 (runtime)" in text and "model_fp16.tflite" in text
    assert "## Folder throughput" in text and "## Batch 1 beside a busy neighbour" in text
    with Image.open(out / "bench-fashion_mnist.png") as chart:
        assert chart.format == "PNG" and chart.width > 500


def test_no_models_is_a_one_line_error(tmp_path, capsys):
    assert main(["--models-dir", str(tmp_path), "--quick", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_an_unwritable_report_folder_is_refused_before_any_measuring(tmp_path, capsys):
    (tmp_path / "models" / "fashion_mnist").mkdir(parents=True)
    (tmp_path / "models" / "fashion_mnist" / "model.keras").write_bytes(b"")
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "reports"
    assert main(["--models-dir", str(tmp_path / "models"), "--quick", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {out}: cannot write the reports there") and err.count("\n") == 1


def test_any_export_folder_is_benchmarked_with_model(exported_models, tmp_path, capsys):
    mine = tmp_path / "my-export"
    mine.mkdir()
    for name in ("manifest.json", "model_int8.onnx", "model_int8.tflite", "model_int8.tflite.json"):
        shutil.copy2(exported_models / "fashion_mnist" / name, mine / name)
    out = tmp_path / "reports"
    quickest = ["--batch-sizes", "1", "--folder-images", "0", "--cold-runs", "0"]
    args = ["--model", str(mine), "--quick", "--out", str(out), *quickest]
    assert main(args) == 0
    result = json.loads((out / "bench-my-export.json").read_text())
    assert {"ort_int8", "litert_int8"} <= {cell["key"] for cell in result["cells"]}
    assert any("model.keras" in note for note in result["skipped"])  # no float model beside an export

    assert main(["--model", str(tmp_path), "--quick", "--out", str(out)]) == 2
    assert f"{tmp_path}: no manifest.json" in capsys.readouterr().err


def test_all_includes_the_release_folders_one_level_down(tmp_path):
    """#47: `python -m benchmarks` without --dataset skipped models/micro/<dataset>."""
    from benchmarks.__main__ import dataset_folders

    for folder in ("fashion_mnist", "cifar10", "micro/fashion_mnist", "micro/cifar10"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "manifest.json").write_text('{"artifacts": []}')
    (tmp_path / "notes").mkdir()  # neither a release nor one above releases
    assert dataset_folders(tmp_path, "all") == [
        ("cifar10", tmp_path / "cifar10"),
        ("fashion_mnist", tmp_path / "fashion_mnist"),
        ("micro-cifar10", tmp_path / "micro" / "cifar10"),
        ("micro-fashion_mnist", tmp_path / "micro" / "fashion_mnist"),
    ]
    assert dataset_folders(tmp_path, "micro/cifar10") == [("micro-cifar10", tmp_path / "micro" / "cifar10")]
