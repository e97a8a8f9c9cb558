#!/usr/bin/python3
"""Training throughput and peak memory of our engine vs PyTorch on the same ViT / switch-ViT.

Both sides train the same architecture (models/vit.cpp, models/layers.cpp,
models/moe_token_choice.cpp: pre-LN blocks, qkv Linear with bias, erf GELU, dropout 0.1,
LayerNorm eps 1e-5, CLS pooling, MLP head, top-1 dropless switch layers) with AdamW, gradient
clipping at 1.0 and a warmup-cosine schedule, on 32x32x3 images, for the same number of steps and
the same batch, with the same number of CPU threads. Each side runs in its own fresh subprocess,
so the peak RSS (wait4 rusage of that child) is per run.

  ours:  ./train --model vit|switch_vit ... (Fashion-MNIST padded to 32x32x3, the preset's crop +
         flip); images/s from the time_s deltas of metrics.jsonl over the steady steps (the
         final evaluation and the start-up are not counted); CPU time per step from
         /proc/PID/stat, sampled as each "step N/M" log line appears.
  torch: this script with --torch-worker; random input tensors of the same shape (data loading
         is not the point), the same step accounting.

Both children get OMP/MKL/OPENBLAS_NUM_THREADS = --threads and OMP_WAIT_POLICY=PASSIVE (what
./train sets for itself). Timings on a shared machine are noisy: --repeat alternates the runs and
keeps each side's fastest, and the table also gives CPU time per image.

  scripts/bench_vs_torch.py                        # default: the d192 variants, 1-2 min on 2 cores
  scripts/bench_vs_torch.py --configs vit,switch8  # the full-width (d 300) reference models
  scripts/bench_vs_torch.py --steps 6 --batch 64 --threads 2 --torch-moe both --repeat 2
"""
import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (preset, extra ./train flags, torch model kwargs)
#   dim, heads, experts (0: dense); the rest is the switch-ViT base of models/presets.cpp.
CONFIGS = {
    "vit": ("vit", [], dict(dim=300, heads=12, experts=0)),
    "switch8": ("switch_vit", ["--experts", "8"], dict(dim=300, heads=12, experts=8)),
    "vit_d192": ("vit", ["--dmodel", "192"], dict(dim=192, heads=12, experts=0)),
    "switch8_d192": ("switch_vit", ["--experts", "8", "--dmodel", "192"],
                     dict(dim=192, heads=12, experts=8)),
    "switch32_d192": ("switch_vit", ["--experts", "32", "--dmodel", "192"],
                      dict(dim=192, heads=12, experts=32)),
}
DEFAULT_CONFIGS = "vit_d192,switch8_d192"

BASE = dict(image=32, patch=4, channels=3, classes=10, depth=12, mlp=1024, head_hidden=3072,
            dropout=0.1, eps=1e-5)

CLK_TCK = os.sysconf("SC_CLK_TCK")


def thread_env(threads):
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(threads)
    # ./train re-executes itself with OMP_WAIT_POLICY=PASSIVE unless it is set (engine/omp_env.cpp):
    # spinning OpenMP threads starve OpenBLAS's own threads. Give torch (also OpenMP + OpenBLAS)
    # the same setting, which makes it faster here too.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def config_overrides(cfg):
    """The --config_overrides JSON for ./train: the ViT heads (when --dmodel changes the width,
    the preset's 12 heads may not divide it) and the run settings of a benchmark."""
    o = {"run": {"log_every": 1, "checkpoint_every": 0, "eval_examples": 100}}
    if cfg["dim"] != 300:
        o["model"] = {"heads": cfg["heads"]}
    return o


def heads_for(dim, heads):
    return heads if dim % heads == 0 else 6


# --------------------------------------------------------------------------------------------
# torch side

def torch_model(cfg):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def trunc(t, std=0.02):
        nn.init.trunc_normal_(t, std=std, a=-2 * std, b=2 * std)

    class Linear(nn.Linear):
        # models/layers.cpp: trunc_normal(0.02) weights, zero biases.
        def reset_parameters(self):
            trunc(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    class Attention(nn.Module):
        def __init__(self, d, h, p):
            super().__init__()
            self.h, self.dh = h, d // h
            self.qkv = Linear(d, 3 * d, bias=True)
            self.proj = Linear(d, d, bias=True)
            self.drop = nn.Dropout(p)

        def forward(self, x):
            B, N, D = x.shape
            q, k, v = self.qkv(x).reshape(B, N, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)
            a = torch.softmax((q @ k.transpose(-2, -1)) * self.dh ** -0.5, dim=-1)
            o = (a @ v).transpose(1, 2).reshape(B, N, D)
            return self.drop(self.proj(o))

    class MLP(nn.Module):
        def __init__(self, d, hidden, p):
            super().__init__()
            self.fc1 = Linear(d, hidden)
            self.fc2 = Linear(hidden, d)
            self.drop = nn.Dropout(p)

        def forward(self, x):
            return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))

    class Switch(nn.Module):
        """Top-1 token-choice switch layer, dropless: router Linear with bias, softmax, argmax,
        output scaled by the chosen probability. dispatch 'loop': per expert a boolean-mask
        gather and an indexed write (the reference's loop); 'sorted': one argsort by expert, one
        gather, contiguous slices per expert, one scatter back."""

        def __init__(self, d, hidden, E, p, dispatch):
            super().__init__()
            self.E, self.dispatch = E, dispatch
            self.router = Linear(d, E, bias=True)
            self.experts = nn.ModuleList(MLP(d, hidden, p) for _ in range(E))

        def forward(self, x):
            B, N, D = x.shape
            xf = x.reshape(B * N, D)
            prob = torch.softmax(self.router(xf), dim=-1)
            pmax, route = prob.max(dim=-1)
            if self.dispatch == "loop":
                out = xf.new_zeros(xf.shape)
                for e in range(self.E):
                    idx = torch.eq(route, e).nonzero(as_tuple=True)[0]
                    if idx.numel():
                        out[idx] = self.experts[e](xf[idx])
            else:
                order = torch.argsort(route)
                counts = torch.bincount(route, minlength=self.E).tolist()
                xs = xf.index_select(0, order)
                ys = [self.experts[e](part) if part.shape[0] else part
                      for e, part in enumerate(torch.split(xs, counts))]
                out = torch.empty_like(xf).index_copy(0, order, torch.cat(ys))
            return (out * pmax.unsqueeze(1)).reshape(B, N, D)

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            d = c["dim"]
            self.norm1 = nn.LayerNorm(d, eps=c["eps"])
            self.attn = Attention(d, c["heads"], c["dropout"])
            self.norm2 = nn.LayerNorm(d, eps=c["eps"])
            if c["experts"]:
                hidden = c["mlp"] - c["experts"] // 2 + 2
                self.mlp = Switch(d, hidden, c["experts"], c["dropout"], c["dispatch"])
            else:
                self.mlp = MLP(d, c["mlp"], c["dropout"])

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class ViT(nn.Module):
        def __init__(self, c):
            super().__init__()
            d, p = c["dim"], c["patch"]
            self.p = p
            self.proj = Linear(p * p * c["channels"], d)
            self.cls = nn.Parameter(torch.zeros(1, 1, d))
            self.pos = nn.Parameter(torch.zeros(1, d, d))  # the reference's d-row table
            trunc(self.cls)
            trunc(self.pos)
            self.drop = nn.Dropout(c["dropout"])
            self.blocks = nn.ModuleList(Block(c) for _ in range(c["depth"]))
            self.norm = nn.LayerNorm(d, eps=c["eps"])
            self.fc1 = Linear(d, c["head_hidden"])
            self.fc2 = Linear(c["head_hidden"], c["classes"])

        def forward(self, img):  # [B, H, W, C] channels last, as ./train feeds it
            B, H, W, C = img.shape
            p = self.p
            x = img.reshape(B, H // p, p, W // p, p, C).permute(0, 1, 3, 2, 4, 5)
            x = self.proj(x.reshape(B, (H // p) * (W // p), p * p * C))
            x = torch.cat([self.cls.expand(B, -1, -1), x], dim=1)
            x = self.drop(x + self.pos[:, : x.shape[1]])
            for b in self.blocks:
                x = b(x)
            return self.fc2(F.gelu(self.fc1(self.norm(x)[:, 0])))

    return ViT(cfg)


def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def torch_worker(a):
    import torch
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    base_rss = rss_mb()
    cfg = dict(BASE, **json.loads(a.torch_cfg))
    model = torch_model(cfg)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    # The engine's recipe for these presets (trainer/run_config.cpp): AdamW 2.5e-4, eps 1e-7,
    # wd 1e-4, clip 1.0, warmup-cosine over 50 warm-up steps.
    opt = torch.optim.AdamW(model.parameters(), lr=2.5e-4, betas=(0.9, 0.999), eps=1e-7,
                            weight_decay=1e-4)
    total = a.steps

    def lr_at(s):
        if s < 50:
            return (s + 1) / 50
        t = (s - 50) / max(1, total - 50)
        return 1e-6 / 2.5e-4 + (1 - 1e-6 / 2.5e-4) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    B = a.batch
    g = torch.Generator().manual_seed(1)
    steps = []
    for s in range(a.steps):
        x = torch.randn(B, cfg["image"], cfg["image"], cfg["channels"], generator=g)
        y = torch.randint(0, cfg["classes"], (B,), generator=g)
        t0, c0 = time.perf_counter(), time.process_time()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        steps.append({"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0,
                      "loss": float(loss)})
    print(json.dumps({"params": params, "base_rss_mb": base_rss, "steps": steps}), flush=True)


# --------------------------------------------------------------------------------------------
# running a child with its own rusage

def wait_child(p, poll=None):
    """Waits for Popen p with wait4 (rusage of this child alone), calling poll() every 20 ms."""
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid == p.pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            return ru
        if poll:
            poll()
        time.sleep(0.02)


def proc_cpu_s(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
    except (OSError, IndexError, ValueError):
        return None


def read_jsonl(path):
    """The complete JSON lines of a metrics file (a partial last line is skipped)."""
    rows = []
    try:
        with open(path) as f:
            for line in f:
                if not line.endswith("\n"):
                    break
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    except OSError:
        pass
    return rows


def ours_params(preset, flags, cfg):
    cmd = [os.path.join(ROOT, "train"), "--model", preset, *flags, "--summary",
           "--config_overrides", json.dumps(config_overrides(cfg))]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    m = re.search(r"^\s*total\s+([\d,]+)", r.stdout, re.M)
    if not m:
        raise RuntimeError(f"no total line in {' '.join(cmd)}:\n{r.stdout}{r.stderr}")
    return int(m.group(1).replace(",", ""))


def run_ours(preset, flags, cfg, a, out_dir):
    cmd = [os.path.join(ROOT, "train"), "--model", preset, *flags, "--steps", str(a.steps),
           "--batch", str(a.batch), "--threads", str(a.threads), "--out", out_dir,
           "--config_overrides", json.dumps(config_overrides(cfg))]
    metrics = os.path.join(out_dir, "metrics.jsonl")
    log_path = out_dir + ".log"
    log = open(log_path, "w")
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                         env=thread_env(a.threads))
    # metrics.jsonl is flushed only at checkpoints and at the end, but with log_every 1 the
    # trainer prints "step N/M" to stderr (unbuffered) right after each optimizer step.
    cpu_at = {}  # training step (0-based) -> CPU seconds of the child when its line appeared
    step_re = re.compile(r"^step\s+(\d+)/", re.M)

    def poll():
        with open(log_path) as f:
            seen = [int(m.group(1)) - 1 for m in step_re.finditer(f.read())]
        if len(seen) > len(cpu_at):
            c = proc_cpu_s(p.pid)
            for s in seen[len(cpu_at):]:
                cpu_at[s] = c
    ru = wait_child(p, poll)
    log.close()
    rows = [r for r in read_jsonl(metrics) if "loss" in r and "time_s" in r]
    if p.returncode != 0 or len(rows) < a.steps:
        with open(out_dir + ".log") as f:
            tail = f.read()[-2000:]
        raise RuntimeError(f"./train failed (rc {p.returncode}):\n{' '.join(cmd)}\n{tail}")
    return rows, cpu_at, ru


# --------------------------------------------------------------------------------------------

def steady(values, warmup):
    v = values[warmup:]
    return v if v else values[-1:]


def measure_ours(name, preset, flags, cfg, a, tmp, rep):
    out_dir = os.path.join(tmp, f"{name}_{rep}")
    t0 = time.time()
    rows, cpu_at, ru = run_ours(preset, flags, cfg, a, out_dir)
    times = [r["time_s"] for r in rows]
    dts = [t - s for s, t in zip([0.0] + times, times)]  # time_s: seconds since training began
    st = steady(dts, a.warmup)
    cpus = [cpu_at.get(r["step"]) for r in rows]
    cpu = None  # needs the CPU time at the end of the last warm-up step
    if a.warmup and all(c is not None for c in cpus[a.warmup - 1:]):
        cpu = (cpus[-1] - cpus[a.warmup - 1]) / (a.batch * (len(cpus) - a.warmup))
    print(f"  {name}: ours  done in {time.time() - t0:4.0f} s, step times "
          f"{', '.join(f'{d:.2f}' for d in dts)} s", flush=True)
    return dict(ips=a.batch * len(st) / sum(st), cpu=cpu, rss=ru.ru_maxrss / 1024)


def measure_torch(label, tcfg, a, tmp, rep):
    slug = re.sub(r"\W+", "_", label)
    log = os.path.join(tmp, f"torch_{slug}_{rep}")
    cmd = [sys.executable, os.path.abspath(__file__), "--torch-worker", "--torch-cfg",
           json.dumps(tcfg), "--steps", str(a.steps), "--batch", str(a.batch), "--threads",
           str(a.threads)]
    t0 = time.time()
    with open(log + ".out", "w") as fo, open(log + ".err", "w") as fe:
        p = subprocess.Popen(cmd, stdout=fo, stderr=fe, env=thread_env(a.threads))
        ru = wait_child(p)
    out, err = open(log + ".out").read(), open(log + ".err").read()
    if p.returncode != 0 or not out.strip():
        raise RuntimeError(f"torch worker failed (rc {p.returncode}):\n{err[-3000:]}")
    res = json.loads(out.strip().splitlines()[-1])
    st = steady(res["steps"], a.warmup)
    walls = ", ".join(f"{s['wall']:.2f}" for s in res["steps"])
    print(f"  {label}: torch done in {time.time() - t0:4.0f} s, step times {walls} s", flush=True)
    return dict(ips=a.batch * len(st) / sum(s["wall"] for s in st),
                cpu=sum(s["cpu"] for s in st) / (a.batch * len(st)), rss=ru.ru_maxrss / 1024,
                params=res["params"], base_rss=res["base_rss_mb"])


def best(runs):
    """The fastest of repeated runs (interference from other processes only slows a run down);
    the peak RSS is the largest seen."""
    b = dict(max(runs, key=lambda r: r["ips"]))
    b["rss"] = max(r["rss"] for r in runs)
    cpus = [r["cpu"] for r in runs if r["cpu"]]
    b["cpu"] = min(cpus) if cpus else None
    return b


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="configs: " + ", ".join(CONFIGS))
    ap.add_argument("--steps", type=int, default=3, help="training steps per run (default 3)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="first steps left out of the timings (default 1)")
    ap.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    ap.add_argument("--configs", default=DEFAULT_CONFIGS,
                    help=f"comma-separated, of: {', '.join(CONFIGS)} (default {DEFAULT_CONFIGS})")
    ap.add_argument("--torch-moe", choices=["loop", "sorted", "both"], default="sorted",
                    help="torch switch-layer dispatch: loop (boolean mask per expert, as the "
                         "reference), sorted (one argsort + contiguous slices per expert), both "
                         "(default sorted: as fast or faster here)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="alternate ours/torch runs this many times and keep each side's "
                         "fastest run (default 1)")
    ap.add_argument("--keep", action="store_true", help="keep the run folders and logs")
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--torch-cfg", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.torch_worker:
        return torch_worker(a)

    train = os.path.join(ROOT, "train")
    for _ in range(10):
        if os.access(train, os.X_OK):
            break
        print("waiting for ./train (being rebuilt?)", file=sys.stderr)
        time.sleep(30)
    names = [n.strip() for n in a.configs.split(",") if n.strip()]
    for n in names:
        if n not in CONFIGS:
            ap.error(f"unknown config {n!r}; valid: {', '.join(CONFIGS)}")
    if a.steps <= a.warmup:
        ap.error("--steps must be larger than --warmup")
    if a.batch < 1 or a.threads < 1 or a.repeat < 1:
        ap.error("--batch, --threads and --repeat must be >= 1")

    tmp = tempfile.mkdtemp(prefix="bench_vs_torch_")
    print(f"batch {a.batch}, {a.steps} steps ({a.warmup} warm-up step(s) not timed), "
          f"{a.threads} threads, OMP_WAIT_POLICY={thread_env(a.threads)['OMP_WAIT_POLICY']}; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    results = []
    try:
        for n in names:
            preset, flags, tcfg = CONFIGS[n]
            cfg = dict(BASE, **tcfg)
            cfg["heads"] = heads_for(cfg["dim"], cfg["heads"])
            p_ours = ours_params(preset, flags, cfg)
            dispatches = (["loop", "sorted"] if a.torch_moe == "both" else [a.torch_moe]) \
                if cfg["experts"] else ["-"]
            ours_runs, torch_runs = [], {d: [] for d in dispatches}
            for rep in range(a.repeat):
                ours_runs.append(measure_ours(n, preset, flags, cfg, a, tmp, rep))
                for d in dispatches:
                    label = n if d == "-" else f"{n} [{d}]"
                    torch_runs[d].append(measure_torch(
                        label, dict(tcfg, heads=cfg["heads"], dispatch=d), a, tmp, rep))
            o = best(ours_runs)
            for d in dispatches:
                t = best(torch_runs[d])
                results.append(dict(name=n if d == "-" else f"{n} [{d}]", p_ours=p_ours,
                                    ours=o, torch=t))
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"run folders and logs kept in {tmp}")

    print()
    print("parameters (ours: ./train --summary total; torch: sum of numel):")
    for r in results:
        ok = "match" if r["p_ours"] == r["torch"]["params"] else "DIFFER"
        print(f"  {r['name']:<24} ours {r['p_ours']:>12,}  torch {r['torch']['params']:>12,}  {ok}")
    print()
    hdr = (f"{'config':<24} {'ours img/s':>10} {'torch img/s':>11} {'ratio':>6} "
           f"{'ours peak MB':>12} {'torch peak MB':>13} {'ratio':>6} "
           f"{'ours cpu-ms/img':>15} {'torch cpu-ms/img':>16} {'ratio':>6}")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        o, t = r["ours"], r["torch"]
        oc = f"{1e3 * o['cpu']:.1f}" if o["cpu"] else "n/a"
        cr = f"{o['cpu'] / t['cpu']:.2f}" if o["cpu"] else "n/a"
        print(f"{r['name']:<24} {o['ips']:>10.1f} {t['ips']:>11.1f} {o['ips'] / t['ips']:>6.2f} "
              f"{o['rss']:>12.0f} {t['rss']:>13.0f} {o['rss'] / t['rss']:>6.2f} "
              f"{oc:>15} {1e3 * t['cpu']:>16.1f} {cr:>6}")
    print()
    print("ratio = ours / torch in every column: img/s > 1 means ours is faster; peak MB and CPU "
          "time per image > 1 mean ours uses more.")
    if results:
        dataset_mb = 70000 * 32 * 32 * 3 / 2**20  # Fashion-MNIST train + test, uint8, padded
        print(f"peak MB is the max RSS of each child process: ours includes the dataset held in "
              f"RAM (~{dataset_mb:.0f} MB: uint8 Fashion-MNIST padded to 32x32x3), torch its "
              f"runtime (~{results[0]['torch']['base_rss']:.0f} MB resident after import torch).")
    print(f"load average now {os.getloadavg()[0]:.2f}: on a busy machine wall-clock img/s is noisy "
          f"(use --repeat / --steps); CPU time per image is steadier.")


if __name__ == "__main__":
    main()
