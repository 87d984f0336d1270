"""The Markdown table, the raw JSON and the PNG plot of one run."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from pathlib import Path

REFERENCE = "kubewsgi"
GOALS = [  # (system, peer, minimum ratio of req/s) on hello world
    ("kubewsgi", "granian", 1.0),
    ("kubewsgi", "nginx+gunicorn", 5.0),
    ("kubewsgi-worker", "granian", 1.5),
]


def _med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def write_report(out_dir: Path, meta: dict, results: list, apps: list, systems: list) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = meta["started"].replace("-", "").replace(":", "").replace(" ", "-").replace("UTC", "").rstrip("-")
    base = out_dir / f"{stamp}-{meta['mode']}"
    rows = {(r.app, r.system): r for r in results}
    titles = {a.key: a.title for a in apps}
    order = [s.key for s in systems]

    lines = [
        f"# kubewsgi benchmark, {meta['mode']} run, {meta['started']}",
        "",
        f"- Machine: {meta['cpus']} × {meta['cpu_model']}, Linux {meta['kernel']}; load average "
        f"{meta['load_before'][0]:.2f} before, {meta['load_after'][0]:.2f} after "
        "(anything above ~0.3 before means other work shared the cores).",
        f"- Code: commit `{meta['commit']}`{' + uncommitted changes' if meta['dirty'] else ''}; "
        f"kubewsgi binary `{meta.get('kubewsgi_binary', '?')}` ({meta['build']} profile).",
        f"- Client: `wrk -t1 -c{meta['connections']}` on loopback, {meta['reps']} × {meta['duration']:g} s "
        f"per system and app after {meta['warmup']:g} s of warm-up; systems run side by side and are "
        "loaded in rotating order (A B C …, B C … A, …). Medians of the runs; p50/p99 are wrk's, "
        "median over runs.",
        f"- Every server: {meta['workers']} worker processes; {meta['threads']} threads per process where "
        "the server has threads (kubewsgi, gunicorn gthread, granian blocking threads), 1 otherwise. "
        "Access logs off everywhere. Peak RSS = highest sampled sum over all processes of a system.",
        "- Versions: " + "; ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        "",
    ]
    for app in [a for a in apps if any(r.app == a.key for r in results)]:
        lines += [f"## {app.key}: {titles[app.key]}", ""]
        ref = rows.get((app.key, REFERENCE))
        ref_rps = _med(ref.rps) if ref and not ref.failed else None
        wrk_ = rows.get((app.key, "kubewsgi-worker"))
        worker_rps = _med(wrk_.rps) if wrk_ and not wrk_.failed else None
        lines += [
            "| system | req/s | p50 ms | p99 ms | peak RSS MiB | kubewsgi ÷ this | worker ÷ this | errors |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for key in order:
            r = rows.get((app.key, key))
            if not r:
                continue
            if r.failed:
                lines.append(f"| {r.label} | failed: {r.failed} | | | | | | |")
                continue
            rps = _med(r.rps)
            ratio = f"{ref_rps / rps:.2f}×" if ref_rps and rps else "—"
            wratio = f"{worker_rps / rps:.2f}×" if worker_rps and rps else "—"
            errs = r.errors + r.non2xx
            lines.append(
                f"| {r.label} | {_fmt(rps, ',.0f')} | {_fmt(_med(r.p50_ms), '.2f')} | "
                f"{_fmt(_med(r.p99_ms), '.2f')} | {r.peak_rss / 2**20:.1f} | {ratio} | {wratio} | "
                f"{errs} |"
            )
        lines.append("")

    goal_lines = []
    for a, b, want in GOALS:
        ra, rb = rows.get(("hello", a)), rows.get(("hello", b))
        if ra and rb and ra.rps and rb.rps:
            got = _med(ra.rps) / _med(rb.rps)
            goal_lines.append(f"| {a} ÷ {b} req/s | {got:.2f}× | ≥ {want:g}× | {'met' if got >= want else 'not met'} |")
    ka, gr = rows.get(("hello", "kubewsgi")), rows.get(("hello", "granian"))
    if ka and gr and ka.p99_ms and gr.p99_ms:
        p_ka, p_gr = _med(ka.p99_ms), _med(gr.p99_ms)
        goal_lines.append(
            f"| kubewsgi p99 vs granian p99 | {p_ka:.2f} ms vs {p_gr:.2f} ms | no worse | "
            f"{'met' if p_ka <= p_gr else 'not met'} |"
        )
    if goal_lines:
        lines += ["## Goals (hello world)", "", "| ratio | measured | goal | |", "|---|---:|---:|---|"] + goal_lines + [""]

    md = base.with_suffix(".md")
    md.write_text("\n".join(lines))
    js = base.with_suffix(".json")
    js.write_text(json.dumps({"meta": meta, "results": [asdict(r) for r in results]}, indent=1))
    paths = [md, js]
    png = _plot(base.with_suffix(".png"), results, apps, order)
    if png:
        paths.append(png)
        md.write_text(md.read_text() + f"![requests per second]({png.name})\n")
    return paths


def _plot(path: Path, results: list, apps: list, order: list[str]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    app_keys = [a.key for a in apps if any(r.app == a.key and r.rps for r in results)]
    sys_keys = [k for k in order if any(r.system == k and r.rps for r in results)]
    if not app_keys:
        return None
    rows = {(r.app, r.system): r for r in results}
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(app_keys) + 2), 4.5))
    width = 0.8 / max(1, len(sys_keys))
    for i, key in enumerate(sys_keys):
        xs, ys = [], []
        for j, app in enumerate(app_keys):
            r = rows.get((app, key))
            if r and r.rps:
                xs.append(j + i * width - 0.4 + width / 2)
                ys.append(statistics.median(r.rps))
        ax.bar(xs, ys, width, label=key)
    ax.set_xticks(range(len(app_keys)), app_keys)
    ax.set_yscale("log")
    ax.set_ylabel("requests/s (median, log scale)")
    ax.legend(fontsize="small", ncol=2)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
