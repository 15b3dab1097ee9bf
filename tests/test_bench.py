"""`moshi-mac bench` and the speed machinery it measures.

- The benchmark runs end to end (`--quick`: tiny Hibiki shape, the three implementations,
  bandwidth, Mimi, file mode) and writes valid JSON, a PNG plot and Markdown tables.
- The harness is part of the package; without the PyTorch/moshi_mlx references the
  default run says so in one line and measures moshi-mac alone, and asking for a missing
  reference by name is one error line.
- A streaming step makes no device sync, and splitting matmuls over CPU streams changes
  no token (the split is by output rows: every dot product is the same).
- The report's aggregation, ratios and bytes-per-step bookkeeping.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from moshi_mac import cli
from moshi_mac.config import load_config
from moshi_mac.generate import GenOptions, LmGen
from moshi_mac.models import Lm
from moshi_mac.models.layers import cpu_streams, prepare_dense
from moshi_mac.random_model import random_lm_tensors, tiny_config

from moshi_mac.bench import impls, report, run
from moshi_mac.bench.common import bench_config, n_params, step_bytes

from .conftest import require_reference

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.reference
def test_quick_bench_writes_json_png_and_markdown(tmp_path, shared_mimi):
    require_reference("moshi_mlx", "moshi", "torch")
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    assert cli.main(["bench", "--quick", "-o", str(out), "--markdown", str(md)]) == 0
    data = json.loads(out.read_text())
    assert data["bandwidth"]["read_gbs"] > 0
    rows = {r["impl"]: r for r in data["lm"]}
    assert set(rows) == {"moshi-mac", "moshi_mlx", "pytorch"}
    for impl, r in rows.items():
        assert r["status"] == "ok", (impl, r["status"])
        assert r["steps_per_s"]["median"] > 0 and r["ms_per_step"]["min"] <= r["ms_per_step"]["max"]
        assert 0 < r["fraction_of_limit"] < 1
        assert r["split"]["temporal_ms"] > 0 and r["split"]["depformer_ms"] > 0
        assert r["peak_rss_gb"] > 0 and len(r["loadavg_before"]) == 3
    assert rows["moshi-mac"]["syncs_in_step"] == 0  # the harness's own eval is the only one
    assert rows["moshi_mlx"]["syncs_in_step"] > 0  # its `.any()` checks
    assert 0 < rows["moshi-mac"]["graph_nodes"] < rows["moshi_mlx"]["graph_nodes"]
    pairs = {c["vs"] for c in data["comparisons"]}
    assert pairs == {"moshi_mlx", "pytorch"}
    assert data["mimi"][0]["status"] == "ok" and data["mimi"][0]["encode_ms"]["median"] > 0
    e2e = data["e2e"][0]
    assert e2e["status"] == "ok" or e2e["status"].startswith("unavailable"), e2e["status"]
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = md.read_text()
    assert "| model | shape | impl | dtype |" in text and "moshi-mac / moshi_mlx" in text


def test_bench_without_references_runs_moshi_mac_alone(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(run, "missing_modules",
                        lambda impl: {"moshi_mlx": ["moshi_mlx"], "pytorch": ["torch"]}.get(impl, []))
    args = cli.build_parser().parse_args(["bench", "--quick", "-o", str(tmp_path / "b.json")])
    run.check_args(args, pytest.fail)
    assert args.impls == ["moshi-mac"]
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "moshi_mlx, torch" in lines[0] and "moshi-mac alone" in lines[0]
    assert "moshi-mac[reference]" in lines[0]  # printed as is, not eaten as rich markup

    assert cli.main(["bench", "--quick", "--impls", "pytorch", "-o", str(tmp_path / "c.json")]) == 1
    err = capsys.readouterr().err.strip()
    assert "torch" in err and "not installed" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "c.json").exists()


def test_bench_outputs_default_to_the_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("MOSHI_MAC_CACHE", str(tmp_path / "cache"))
    args = cli.build_parser().parse_args(["bench", "--quick"])
    assert args.output == tmp_path / "cache" / "bench" / "bench.json"
    assert "bench" in cli.build_parser()._subparsers._group_actions[0].choices


# ---------------------------------------------------------------------------------------
# The step: no syncs, and splitting matmuls changes nothing
# ---------------------------------------------------------------------------------------

def _tiny_model(name: str) -> tuple[Lm, dict]:
    cfg = tiny_config(load_config(ROOT / "configs" / f"{name}.toml"), text_vocab=200)
    tensors = random_lm_tensors(cfg, seed=0, dtype=mx.float32)
    model = Lm(cfg)
    model.load_weights(list(tensors.items()), strict=True)
    mx.eval(model.parameters())
    return model, tensors


def test_a_streaming_step_never_syncs():
    model, _ = _tiny_model("hibiki-1b")
    gen = LmGen(model, options=GenOptions(seed=0))
    codes = mx.zeros((1, model.cfg.user_codebooks), dtype=mx.int32)
    for _ in range(3):
        gen.step(codes)
    with impls._MlxProbe() as probe:
        out = gen.step(codes)
        syncs = probe.syncs
    assert syncs == 0
    assert out is not None and probe.nodes > 0  # its pieces were scheduled (async_eval)


def test_the_split_times_a_step_without_changing_it():
    """`split` syncs where a step schedules its pieces: the same tokens and state as a
    plain step, every piece timed, and `mx.async_eval` given back afterwards."""
    cfg = bench_config("hibiki-1b", "tiny")
    plain, timed = (impls.build("moshi-mac", cfg, "fp32", seed=0) for _ in range(2))
    scheduled = mx.async_eval
    rng = np.random.default_rng(0)
    for codes in rng.integers(0, cfg.card, size=(5, 1, cfg.user_codebooks)).astype(np.int32):
        plain.step(codes)
        s = timed.split(codes)
        assert set(s) == {"temporal_ms", "depformer_ms", "rest_ms", "total_ms"}
        assert s["temporal_ms"] > 0 and s["depformer_ms"] > 0 and s["rest_ms"] >= 0
        assert s["temporal_ms"] + s["depformer_ms"] <= s["total_ms"]
    assert mx.async_eval is scheduled
    for a, b in zip(plain.gen.state_arrays(), timed.gen.state_arrays(), strict=True):
        assert np.array_equal(np.array(a), np.array(b))


@pytest.mark.parametrize("name,greedy", [("moshi-7b", True), ("hibiki-1b", False)])
def test_matmuls_split_over_cpu_streams_give_the_same_tokens(name, greedy):
    if len(cpu_streams()) < 2:
        pytest.skip("one CPU stream: nothing to split")
    plain, tensors = _tiny_model(name)
    split = Lm(plain.cfg)
    split.load_weights(list(tensors.items()), strict=True)
    mx.eval(split.parameters())
    assert prepare_dense(plain, split=False) == 0
    assert prepare_dense(split, min_entries=1, chunk_entries=1 << 10) > 10
    rng = np.random.default_rng(0)
    gens = [LmGen(m, batch_size=2, options=GenOptions(greedy=greedy, seed=3)) for m in (plain, split)]
    for codes in rng.integers(0, plain.cfg.card, size=(24, 2, plain.cfg.user_codebooks)):
        a, b = (g.step(mx.array(codes)) for g in gens)
        if a is not None:
            assert (np.array(a) == np.array(b)).all()


# ---------------------------------------------------------------------------------------
# Report bookkeeping
# ---------------------------------------------------------------------------------------

def _record(impl, dtype, ms_rounds, status="ok", temporal_ms=1.0):
    return {"impl": impl, "model": "hibiki-1b", "shape": "tiny", "dtype": dtype, "status": status,
            "split": {"temporal_ms": temporal_ms, "depformer_ms": 2.0}, "sampling_ms": temporal_ms,
            "ms_per_step": {"median": float(np.median(ms_rounds)), "min": min(ms_rounds),
                            "max": max(ms_rounds), "per_repeat": list(ms_rounds)},
            "steps_per_s": {"median": 1000 / float(np.median(ms_rounds))},
            "loadavg_before": [1.0, 1.0, 1.0], "context_reached": 10}


def test_report_merges_rounds_and_pairs_implementations():
    records = [_record("moshi-mac", "fp32", [4.0, 4.2], temporal_ms=1.0),
               _record("moshi-mac", "fp32", [5.0, 5.2], temporal_ms=3.0),
               _record("moshi_mlx", "fp32", [12.0, 12.4]), _record("moshi-mac", "bf16", [6.0, 6.0]),
               _record("pytorch", "q8", [1.0], status="unsupported: no q8")]
    rows = report.merge_rounds(records)
    mac = next(r for r in rows if r["impl"] == "moshi-mac" and r["dtype"] == "fp32")
    assert mac["rounds"] == 2 and mac["ms_per_step"]["median"] == pytest.approx(4.6)
    assert (mac["ms_per_step"]["min"], mac["ms_per_step"]["max"]) == (4.0, 5.2)
    assert mac["split"] == {"temporal_ms": 2.0, "depformer_ms": 2.0} and mac["sampling_ms"] == 2.0
    report.add_limits(rows, read_gbs=20.0)
    assert mac["limit_steps_per_s"] > mac["steps_per_s"]["median"]
    comps = report.comparisons(rows)
    same = next(c for c in comps if c["dtype"] == "fp32" and not c.get("fastest"))
    assert same["ratio"] == pytest.approx(12.2 / 4.6)
    fastest = next(c for c in comps if c.get("fastest") and c["vs"] == "moshi_mlx")
    assert fastest["dtype"] == "fp32 vs fp32"
    text = report.markdown({"lm": rows, "comparisons": comps})
    assert "unsupported: no q8" in text and "2.65x" in text


def test_step_bytes_follow_the_dtype():
    cfg = bench_config("hibiki-1b", "real")
    sizes = {d: step_bytes(cfg, d)["weights"] for d in ("fp32", "bf16", "q8", "q4")}
    assert sizes["fp32"] == 2 * sizes["bf16"] > sizes["q8"] > sizes["q4"]
    # every weight but the embedding tables (which a step reads one row of)
    assert 0.8 * 2 * n_params(cfg) < sizes["bf16"] < 2 * n_params(cfg)
    assert step_bytes(cfg, "bf16", context_slots=100)["kv_cache"] == 2 * 16 * 16 * 128 * 100 * 2


def test_a_saved_result_is_reported_again(tmp_path, capsys):
    records = [_record("moshi-mac", "fp32", [4.0, 4.2]), _record("moshi-mac", "fp32", [5.0, 5.2]),
               _record("moshi_mlx", "fp32", [12.0, 12.4]),
               _record("pytorch-cuda", "fp32", [2.0], status="unsupported: this torch has no CUDA device")]
    saved, md = tmp_path / "saved.json", tmp_path / "saved.md"
    saved.write_text(json.dumps({"lm_records": records, "bandwidth": {"read_gbs": 20.0, "read_by": "numpy"}}))
    assert cli.main(["bench", "--report", str(saved), "--markdown", str(md), "--no-plot"]) == 0
    text = md.read_text()
    assert "2.65x" in text and "pytorch-cuda" in text and "no CUDA device" in text
    data = json.loads(saved.read_text())
    assert [c["vs"] for c in data["comparisons"]] == ["moshi_mlx", "moshi_mlx"]
    assert data["lm"][0]["fraction_of_limit"] > 0


def test_reporting_a_file_that_is_not_a_result_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    assert cli.main(["bench", "--report", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.json" in err and "Traceback" not in err
