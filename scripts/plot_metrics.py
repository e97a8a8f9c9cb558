#!/usr/bin/python3
"""Plots the curves of a ./train run folder as PNG files.

  scripts/plot_metrics.py RUN_DIR [--out DIR] [--smooth 0.9]

Reads RUN_DIR/metrics.jsonl (one JSON per optimizer step: step, task, loss, aux_loss, lr,
grad_norm, ..., optional "moe"; and {"step", "eval": [{task, metric, value, examples}, ...]} lines
for periodic evaluations) and RUN_DIR/eval.json (the final evaluation) when present. A partially
written last line (a run still going, or killed) is skipped. Writes to DIR (default RUN_DIR/plots):

  loss.png        training loss per task vs step: raw (thin) and smoothed (EMA, thick)
  lr.png          learning rate vs step
  train_stats.png gradient norm and auxiliary (MoE) loss vs step
  eval.png        accuracy / recall curves from the evaluation lines, with the final eval.json
                  values as markers; a bar chart of eval.json when there are no evaluation lines
  moe.png         per MoE layer: the largest expert load (and drop rate when non-zero) vs step

x axes count optimizer steps done (a metrics line's step + 1; eval.json's "step" as is).
"""
import argparse
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
from matplotlib.ticker import MaxNLocator  # noqa: E402


def read_metrics(path):
    """(train rows, eval rows, skipped line count); tolerates a partial or corrupt line."""
    train, evals, skipped = [], [], 0
    with open(path, "rb") as f:
        data = f.read()
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            skipped += 1
            continue
        if not isinstance(row, dict) or "step" not in row:
            skipped += 1
        elif "eval" in row:
            evals.append(row)
        elif "loss" in row:
            train.append(row)
        else:
            skipped += 1
    return train, evals, skipped


def ema(values, weight):
    """Exponential moving average with bias correction (TensorBoard-style smoothing)."""
    out, acc, norm = [], 0.0, 0.0
    for v in values:
        if not math.isfinite(v):
            out.append(v)
            continue
        acc = weight * acc + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out.append(acc / norm)
    return out


def finite(xs, ys):
    pts = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
    return [p[0] for p in pts], [p[1] for p in pts]


def by_task(train):
    tasks = {}
    for r in train:
        tasks.setdefault(r.get("task", "train"), []).append(r)
    return tasks


def grid(n):
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    return rows, cols


def save(fig, out_dir, name, written):
    path = os.path.join(out_dir, name)
    for ax in fig.axes:  # steps are whole numbers
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    # Room for the suptitle (tight_layout alone lets it overlap the first row's titles).
    top = 1 - 0.4 / fig.get_figheight() if fig._suptitle is not None else 1
    fig.tight_layout(rect=(0, 0, 1, top))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)


def plot_loss(train, smooth, title, out_dir, written):
    tasks = by_task(train)
    rows, cols = grid(len(tasks))
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for i, (task, rs) in enumerate(tasks.items()):
        ax = axes[i // cols][i % cols]
        x, y = finite([r["step"] + 1 for r in rs], [r["loss"] for r in rs])
        ax.plot(x, y, color="C0", alpha=0.3, linewidth=0.8, label="raw")
        if len(y) > 1:
            ax.plot(x, ema(y, smooth), color="C0", linewidth=2, label=f"EMA {smooth:g}")
        if y:
            ax.set_title(f"{task} (last {y[-1]:.4g}, min {min(y):.4g})", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for j in range(len(tasks), rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle(f"{title}: training loss", fontsize=11)
    save(fig, out_dir, "loss.png", written)


def plot_lr(train, title, out_dir, written):
    x, y = finite([r["step"] + 1 for r in train], [r.get("lr") for r in train])
    if not y:
        return
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(x, y, color="C2")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.grid(alpha=0.3)
    ax.set_title(f"{title}: learning rate", fontsize=11)
    save(fig, out_dir, "lr.png", written)


def plot_train_stats(train, smooth, title, out_dir, written):
    gx, gy = finite([r["step"] + 1 for r in train], [r.get("grad_norm") for r in train])
    ax_, ay = finite([r["step"] + 1 for r in train], [r.get("aux_loss") for r in train])
    has_aux = any(v != 0 for v in ay)
    if not gy and not has_aux:
        return
    n = 1 + has_aux
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 3.6), squeeze=False)
    for ax, (x, y, name) in zip(axes[0], [(gx, gy, "gradient norm (before clipping)"),
                                          (ax_, ay, "auxiliary loss")][:n]):
        ax.plot(x, y, color="C1", alpha=0.3, linewidth=0.8)
        if len(y) > 1:
            ax.plot(x, ema(y, smooth), color="C1", linewidth=2)
        ax.set_xlabel("step")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    save(fig, out_dir, "train_stats.png", written)


def plot_moe(train, title, out_dir, written):
    layers = {}
    for r in train:
        for name, st in (r.get("moe") or {}).items():
            layers.setdefault(name, []).append((r["step"] + 1, st.get("max_load"),
                                                st.get("drop_rate")))
    if not layers:
        return

    def layer_key(name):  # blocks.10 after blocks.9
        return [int(p) if p.isdigit() else p for p in name.replace("/", ".").split(".")]

    names = sorted(layers, key=layer_key)
    any_drop = any((d or 0) > 0 for v in layers.values() for _, _, d in v)
    n = 1 + any_drop
    fig, axes = plt.subplots(1, n, figsize=(6.5 * n, 4), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for k, name in enumerate(names):
        c = cmap(k / max(1, len(names) - 1))
        x, y = finite([p[0] for p in layers[name]], [p[1] for p in layers[name]])
        axes[0][0].plot(x, y, color=c, linewidth=1, label=name)
        if any_drop:
            x, y = finite([p[0] for p in layers[name]], [p[2] for p in layers[name]])
            axes[0][1].plot(x, y, color=c, linewidth=1, label=name)
    axes[0][0].set_title("largest expert load (fraction of routed tokens)", fontsize=10)
    if any_drop:
        axes[0][1].set_title("drop rate", fontsize=10)
    for ax in axes[0]:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, ncol=2 if len(names) > 8 else 1)
    fig.suptitle(f"{title}: MoE routing", fontsize=11)
    save(fig, out_dir, "moe.png", written)


def plot_eval(evals, final, title, out_dir, written):
    """Curves of (task, metric) over the evaluation lines; eval.json as markers at its step."""
    series = {}
    for e in evals:
        for r in e.get("eval") or []:
            v = r.get("value")
            if isinstance(v, (int, float)) and math.isfinite(v):
                series.setdefault((r.get("task", "?"), r.get("metric", "?")), []).append(
                    (e["step"] + 1, v))
    fin = {}
    if final:
        for r in final.get("results") or []:
            v = r.get("value")
            if isinstance(v, (int, float)) and math.isfinite(v):
                fin[(r.get("task", "?"), r.get("metric", "?"))] = v
    if not series and not fin:
        return
    final_step = final.get("step") if final else None
    keys = list(series) + [k for k in fin if k not in series]
    tasks = list(dict.fromkeys(k[0] for k in keys))

    if series:
        rows, cols = grid(len(tasks))
        fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
        for i, task in enumerate(tasks):
            ax = axes[i // cols][i % cols]
            for j, key in enumerate(k for k in keys if k[0] == task):
                pts = sorted(series.get(key, []))
                label = key[1] + (f" (final {100 * fin[key]:.1f}%)" if key in fin else "")
                if pts:
                    ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o",
                            markersize=3, color=f"C{j}", label=label)
                if key in fin and final_step is not None:  # eval.json: a star at its step
                    ax.plot([final_step], [100 * fin[key]], marker="*", markersize=11,
                            color=f"C{j}", linestyle="none", label=None if pts else label)
            ax.set_title(task, fontsize=10)
            ax.set_xlabel("step")
            ax.set_ylabel("%")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        for j in range(len(tasks), rows * cols):
            axes[j // cols][j % cols].axis("off")
        fig.suptitle(f"{title}: evaluation", fontsize=11)
    else:
        # Only the final evaluation: one horizontal bar per (task, metric).
        labels = [f"{t} {m}" for t, m in keys]
        vals = [100 * fin[k] for k in keys]
        fig, ax = plt.subplots(figsize=(8, 0.9 + 0.38 * len(keys)))
        colors = [f"C{tasks.index(k[0]) % 10}" for k in keys]
        ax.barh(range(len(keys)), vals, color=colors)
        ax.set_yticks(range(len(keys)))
        ax.set_yticklabels(labels, fontsize=8)
        ax.set_ylim(len(keys) - 0.5, -0.5)  # first row on top, no empty margin
        for i, v in enumerate(vals):
            ax.text(v + 0.5, i, f"{v:.1f}%", va="center", fontsize=8)
        ax.set_xlim(0, max(100, max(vals) + 8))
        ax.set_xlabel("%")
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(f"{title}: final evaluation"
                     + (f" (step {final_step})" if final_step is not None else ""), fontsize=11)
    save(fig, out_dir, "eval.png", written)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("run_dir", help="a ./train run folder (with metrics.jsonl)")
    ap.add_argument("--out", help="output folder (default RUN_DIR/plots)")
    ap.add_argument("--smooth", type=float, default=0.9,
                    help="EMA weight of the smoothed curves, in [0, 1) (default 0.9)")
    a = ap.parse_args()
    if not 0 <= a.smooth < 1:
        ap.error("--smooth must be in [0, 1)")
    metrics = os.path.join(a.run_dir, "metrics.jsonl")
    if not os.path.isfile(metrics):
        sys.exit(f"plot_metrics: {metrics} not found (is {a.run_dir} a ./train run folder?)")
    train, evals, skipped = read_metrics(metrics)
    if skipped:
        print(f"note: skipped {skipped} unreadable line(s) of {metrics} (a partial last line?)",
              file=sys.stderr)

    final = None
    eval_path = os.path.join(a.run_dir, "eval.json")
    if os.path.isfile(eval_path):
        try:
            with open(eval_path) as f:
                final = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            print(f"note: ignoring {eval_path}: {e}", file=sys.stderr)

    title = os.path.basename(os.path.normpath(a.run_dir))
    try:
        with open(os.path.join(a.run_dir, "config.json")) as f:
            cfg = json.load(f)
        fam = cfg.get("model", {}).get("family")
        title += f" ({fam})" if fam else ""
    except (OSError, json.JSONDecodeError, AttributeError):
        pass

    if not train and not evals and not final:
        sys.exit(f"plot_metrics: nothing to plot in {a.run_dir} (metrics.jsonl has no complete "
                 f"lines yet: ./train flushes it at checkpoints and at the end)")
    out_dir = a.out or os.path.join(a.run_dir, "plots")
    os.makedirs(out_dir, exist_ok=True)
    written = []
    if train:
        plot_loss(train, a.smooth, title, out_dir, written)
        plot_lr(train, title, out_dir, written)
        plot_train_stats(train, a.smooth, title, out_dir, written)
        plot_moe(train, title, out_dir, written)
    plot_eval(evals, final, title, out_dir, written)
    tasks = by_task(train)
    print(f"{metrics}: {len(train)} training steps ({len(tasks)} task(s): "
          f"{', '.join(tasks) or '-'}), {len(evals)} evaluation line(s)"
          f"{', eval.json' if final else ''}")
    for p in written:
        print(p)


if __name__ == "__main__":
    main()
