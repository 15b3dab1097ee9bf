"""Results -> derived numbers (bandwidth limit, ratios), a rich table, a PNG plot and a
Markdown table (what benchmarks/README.md quotes)."""

from __future__ import annotations

import statistics
from pathlib import Path

from .common import FRAME_RATE, bench_config, step_bytes

ORDER = {"moshi-mac": 0, "moshi_mlx": 1, "pytorch": 2, "pytorch-mps": 3, "pytorch-cuda": 3}
DTYPE_ORDER = {"fp32": 0, "bf16": 1, "fp16": 2, "q8": 3, "q4": 4}
COLORS = {"moshi-mac": "#1f77b4", "moshi_mlx": "#ff7f0e", "pytorch": "#7f7f7f",
          "pytorch-cuda": "#2ca02c", "pytorch-mps": "#2ca02c"}


# ---------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------

def merge_rounds(records: list[dict]) -> list[dict]:
    """One row per (impl, model, shape, dtype): the median over rounds of the per-round
    medians, the spread over every repeat of every round."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["impl"], r["model"], r["shape"], r["dtype"]), []).append(r)
    rows = []
    for key, recs in groups.items():
        ok = [r for r in recs if r.get("status") == "ok"]
        if not ok:
            rows.append(dict(recs[0]))
            continue
        row = dict(ok[len(ok) // 2])
        med = statistics.median(r["ms_per_step"]["median"] for r in ok)
        per_repeat = [x for r in ok for x in r["ms_per_step"]["per_repeat"]]
        row["rounds"] = len(ok)
        row["ms_per_step"] = dict(row["ms_per_step"], median=med, min=min(per_repeat),
                                  max=max(per_repeat), per_repeat=per_repeat,
                                  round_medians=[r["ms_per_step"]["median"] for r in ok])
        row["steps_per_s"] = {"median": 1000 / med, "min": 1000 / max(per_repeat),
                              "max": 1000 / min(per_repeat)}
        row["x_real_time"] = 1000 / med / FRAME_RATE
        row["loadavg_runs"] = [r["loadavg_before"][0] for r in ok]
        splits = [r["split"] for r in ok if r.get("split")]
        if splits:  # one synced step per round: the median of the rounds, part by part
            row["split"] = {k: statistics.median(s[k] for s in splits) for k in splits[0]}
        sampling = [r["sampling_ms"] for r in ok if r.get("sampling_ms") is not None]
        if sampling:
            row["sampling_ms"] = statistics.median(sampling)
        rows.append(row)
    rows.sort(key=lambda r: (r["shape"] != "real", r["model"], ORDER.get(r["impl"], 9),
                             DTYPE_ORDER.get(r["dtype"], 9)))
    return rows


def add_limits(rows: list[dict], read_gbs: float | None) -> None:
    """Bytes a step reads and the bandwidth limit (steps/s) for each row."""
    cache: dict[tuple, dict] = {}
    for r in rows:
        if r.get("status") != "ok":
            continue
        key = (r["model"], r["shape"], r["dtype"], r.get("context"), r.get("context_reached"))
        if key not in cache:
            cfg = bench_config(r["model"], r["shape"], r.get("context"))
            slots = min(r.get("context_reached", 0), cfg.transformer.context)
            cache[key] = step_bytes(cfg, r["dtype"], context_slots=slots)
        r["step_bytes"] = cache[key]
        if read_gbs:
            limit = read_gbs * 1e9 / cache[key]["total"]
            r["limit_steps_per_s"] = limit
            r["fraction_of_limit"] = r["steps_per_s"]["median"] / limit


def comparisons(rows: list[dict]) -> list[dict]:
    """moshi-mac against the others, same model, shape and dtype; and each one's fastest."""
    ok = [r for r in rows if r.get("status") == "ok"]
    by = {(r["impl"], r["model"], r["shape"], r["dtype"]): r for r in ok}
    others = sorted({r["impl"] for r in ok} - {"moshi-mac"}, key=lambda i: ORDER.get(i, 9))
    out = []
    for (impl, model, shape, dtype), r in by.items():
        if impl != "moshi-mac":
            continue
        for other in others:
            o = by.get((other, model, shape, dtype))
            if o:
                out.append({"model": model, "shape": shape, "dtype": dtype, "vs": other,
                            "moshi_mac_steps_per_s": r["steps_per_s"]["median"],
                            "other_steps_per_s": o["steps_per_s"]["median"],
                            "ratio": r["steps_per_s"]["median"] / o["steps_per_s"]["median"]})
    best: dict[tuple, dict] = {}
    for r in ok:
        key = (r["model"], r["shape"], r["impl"])
        if key not in best or r["steps_per_s"]["median"] > best[key]["steps_per_s"]["median"]:
            best[key] = r
    for (model, shape, impl), r in best.items():
        if impl != "moshi-mac":
            continue
        for other in others:
            o = best.get((model, shape, other))
            if o:
                out.append({"model": model, "shape": shape, "dtype": f"{r['dtype']} vs {o['dtype']}",
                            "vs": other, "fastest": True,
                            "moshi_mac_steps_per_s": r["steps_per_s"]["median"],
                            "other_steps_per_s": o["steps_per_s"]["median"],
                            "ratio": r["steps_per_s"]["median"] / o["steps_per_s"]["median"]})
    out.sort(key=lambda c: (c["shape"] != "real", c["model"], c["vs"], c.get("fastest", False),
                            str(c["dtype"])))
    return out


# ---------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------

def _fmt_params(p: int) -> str:
    return f"{p / 1e9:.2f} B" if p >= 1e8 else f"{p / 1e6:.1f} M"


def lm_cells(r: dict) -> list[str]:
    """The cells of one LM row (shared by the rich and Markdown tables)."""
    head = [r["model"], r["shape"], r["impl"], r["dtype"]]
    if r.get("status") != "ok":
        return head + [r.get("status", "?")] + [""] * 9
    ms, sp = r["ms_per_step"], r.get("split") or {}
    frac = r.get("fraction_of_limit")
    syncs = r.get("syncs_in_step")
    nodes = r.get("graph_nodes")
    return head + [
        f"{ms['median']:.1f}" if ms["median"] >= 10 else f"{ms['median']:.2f}",
        f"{ms['min']:.1f}-{ms['max']:.1f}" if ms["median"] >= 10 else f"{ms['min']:.2f}-{ms['max']:.2f}",
        f"{r['steps_per_s']['median']:.2f}" if r["steps_per_s"]["median"] < 100
        else f"{r['steps_per_s']['median']:.0f}",
        "" if frac is None else f"{100 * frac:.1f} %",
        " / ".join("-" if sp.get(k) is None else f"{sp[k]:.1f}" for k in ("temporal_ms", "depformer_ms"))
        + (" / -" if r.get("sampling_ms") is None else f" / {r['sampling_ms']:.2f}"),
        "n/a" if syncs is None else str(syncs),
        "n/a" if nodes is None else str(nodes),
        f"{r.get('peak_rss_gb', 0):.2f}",
        f"{r['loadavg_before'][0]:.1f}" if "loadavg_runs" not in r
        else "/".join(f"{x:.1f}" for x in r["loadavg_runs"]),
    ]


LM_COLUMNS = ["model", "shape", "impl", "dtype", "ms/step", "spread", "steps/s",
              "of bw limit", "temporal / depformer / sampling ms", "syncs", "graph nodes",
              "peak RSS GB", "load"]


def comparison_cells(c: dict) -> list[str]:
    return [c["model"], c["shape"], c["dtype"] + (" (fastest each)" if c.get("fastest") else ""),
            f"moshi-mac / {c['vs']}", f"{c['moshi_mac_steps_per_s']:.2f}",
            f"{c['other_steps_per_s']:.2f}", f"{c['ratio']:.2f}x"]


COMPARISON_COLUMNS = ["model", "shape", "dtype", "pair", "moshi-mac steps/s", "other steps/s",
                      "ratio"]


def markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def markdown(payload: dict) -> str:
    """The Markdown tables of a run (for benchmarks/README.md)."""
    parts = []
    bw = payload.get("bandwidth") or {}
    if bw.get("read_gbs"):
        parts.append(f"Measured memory read bandwidth: **{bw['read_gbs']:.1f} GB/s** "
                     f"(best of: " + ", ".join(f"{k.removesuffix('_read_gbs')} {v:.1f}"
                                                for k, v in bw.items() if k.endswith("_read_gbs"))
                     + f"; NumPy copy {bw.get('numpy_copy_gbs', 0):.1f} GB/s read + write).")
    if payload.get("lm"):
        parts.append(markdown_table(LM_COLUMNS, [lm_cells(r) for r in payload["lm"]]))
    if payload.get("comparisons"):
        parts.append(markdown_table(COMPARISON_COLUMNS,
                                    [comparison_cells(c) for c in payload["comparisons"]]))
    if payload.get("mimi"):
        parts.append(markdown_table(["Mimi (rustymimi)", "codebooks", "encode ms/frame",
                                     "decode ms/frame", "load"],
                                    [mimi_cells(m) for m in payload["mimi"]]))
    if payload.get("e2e"):
        parts.append(markdown_table(E2E_COLUMNS, [e2e_cells(e) for e in payload["e2e"]]))
    return "\n\n".join(parts)


def mimi_cells(m: dict) -> list[str]:
    if m.get("status") != "ok":
        return ["Mimi", str(m.get("codebooks", "")), m.get("status", "?"), "", ""]
    return ["Mimi", str(m["codebooks"]), f"{m['encode_ms']['median']:.1f}",
            f"{m['decode_ms']['median']:.1f}", f"{m['loadavg_before'][0]:.1f}"]


E2E_COLUMNS = ["file mode", "shape", "dtype", "audio s", "pipelined RTF", "sequential RTF",
               "stage ms (encode / LM / decode), pipelined", "load"]


def e2e_cells(e: dict) -> list[str]:
    if e.get("status") != "ok":
        return [e["model"], e.get("shape", ""), e.get("dtype", ""), "", e.get("status", "?"), "", "", ""]
    st = e["runs"]["pipelined"][0]["stage_ms"]
    return [e["model"], e["shape"], e["dtype"], f"{e['audio_s']:g}", f"{e['pipelined_rtf']:.2f}",
            f"{e['sequential_rtf']:.2f}",
            f"{st['encode']:.1f} / {st['lm']:.1f} / {st['decode']:.1f}",
            f"{e['loadavg_before'][0]:.1f}"]


def print_tables(payload: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if _isatty() else 200)

    def show(title, columns, rows):
        table = Table(title=title)
        for i, col in enumerate(columns):
            table.add_column(col, justify="left" if i < 4 else "right")
        for cells in rows:
            table.add_row(*cells)
        console.print(table)

    bw = payload.get("bandwidth") or {}
    if bw.get("read_gbs"):
        console.print(f"memory read bandwidth: {bw['read_gbs']:.1f} GB/s ({bw['read_by']})")
    if payload.get("lm"):
        show("LM streaming step (batch 1, reference sampling)", LM_COLUMNS,
             [lm_cells(r) for r in payload["lm"]])
    if payload.get("comparisons"):
        show("moshi-mac against the others (steps/s ratios, same run)", COMPARISON_COLUMNS,
             [comparison_cells(c) for c in payload["comparisons"]])
    if payload.get("mimi"):
        show("Mimi", ["Mimi (rustymimi)", "codebooks", "encode ms/frame", "decode ms/frame", "load"],
             [mimi_cells(m) for m in payload["mimi"]])
    if payload.get("e2e"):
        show("End to end, file mode (real-time factor: wall / audio; < 1 is faster than real time)",
             E2E_COLUMNS, [e2e_cells(e) for e in payload["e2e"]])


def _isatty() -> bool:
    import sys

    return sys.stdout.isatty()


# ---------------------------------------------------------------------------------------
# Plot
# ---------------------------------------------------------------------------------------

def plot(payload: dict, path: Path) -> Path | None:
    """Steps/s per implementation and dtype, one panel per shape (log scale), with the
    real-time line (12.5 steps/s) and each group's bandwidth limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in payload.get("lm", []) if r.get("status") == "ok"]
    if not rows:
        return None
    shapes = [s for s in ("real", "tiny") if any(r["shape"] == s for r in rows)]
    fig, axes = plt.subplots(1, len(shapes), figsize=(7.5 * len(shapes), 5.2), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        sub = [r for r in rows if r["shape"] == shape]
        models = sorted({r["model"] for r in sub})
        x = 0.0
        ticks, labels = [], []
        for model in models:
            group = [r for r in sub if r["model"] == model]
            start = x
            for r in group:
                ax.bar(x, r["steps_per_s"]["median"], width=0.8, color=COLORS.get(r["impl"], "k"),
                       alpha=1.0 if r["dtype"] in ("bf16", "fp32") else 0.55)
                lo, hi = r["steps_per_s"]["min"], r["steps_per_s"]["max"]
                ax.plot([x, x], [lo, hi], color="black", linewidth=1)
                ax.text(x, r["steps_per_s"]["median"] * 1.08, r["dtype"], ha="center",
                        va="bottom", fontsize=7, rotation=90)
                if r.get("limit_steps_per_s"):
                    ax.plot([x - 0.4, x + 0.4], [r["limit_steps_per_s"]] * 2, color="red",
                            linewidth=1.5)
                x += 1
            ticks.append((start + x - 1) / 2)
            labels.append(model)
            x += 1
        ax.axhline(FRAME_RATE, color="green", linestyle="--", linewidth=1)
        ax.text(ax.get_xlim()[1], FRAME_RATE, " real time (12.5)", color="green", va="bottom",
                ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_xticks(ticks, labels, fontsize=8)
        ax.set_ylabel("LM steps/s (log)")
        ax.set_title(f"{shape} shapes")
    shown = [i for i in COLORS if any(r["impl"] == i for r in payload["lm"])]
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLORS[i]) for i in shown]
    handles.append(plt.Line2D([0], [0], color="red"))
    handles.append(plt.Line2D([0], [0], color="green", linestyle="--"))
    fig.legend(handles, shown + ["bandwidth limit (measured)", "real time"],
               loc="lower center", ncol=5, fontsize=8)
    machine = payload.get("machine", {})
    fig.suptitle(f"LM step speed, {machine.get('processor', '')}, {machine.get('cpu_count', '?')} "
                 f"cores, MLX {machine.get('mlx_version', '?')} ({machine.get('mlx_device', '')})",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
