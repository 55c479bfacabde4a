"""`dvc plots show` / `dvc plots diff` for an offline machine: one self-contained HTML page of SVGs.

    python scripts/plots.py                   # the workspace's plots    -> dvc_plots/offline.html
    python scripts/plots.py HEAD~1 HEAD       # two revisions, overlaid  (what `dvc plots diff` shows)
    python scripts/plots.py --png             # also one PNG per plot (for a report or an artifact)

DVC's own page loads Vega from a CDN and stays blank without the internet. This asks DVC for the
same plots as filled-in Vega-Lite specs (`dvc plots diff --json`, the plots of `dvc.yaml`) and renders
each with vl-convert (Vega compiled into a Python wheel), so the page needs nothing but a browser.
`--all` adds DVCLive's one-metric plots to the top-level ones of `dvc.yaml`.
"""
from __future__ import annotations

import argparse
import html
import json
import subprocess
import sys
from pathlib import Path


def plot_specs(revisions: list[str], every: bool = False) -> dict[str, dict]:
    """{plot id: Vega-Lite spec with its data} for `revisions` (none: the workspace)."""
    cmd = ["dvc", "plots", "diff", *revisions, "--json"] if revisions else ["dvc", "plots", "show", "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed: {proc.stderr.strip() or proc.stdout.strip()}")
    data = json.loads(proc.stdout).get("data", {})
    return {name: entries[0]["content"] for name, entries in data.items()
            if entries and entries[0].get("type") == "vega" and (every or "/" not in name)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("revisions", nargs="*", help="git revisions to compare (default: the workspace)")
    ap.add_argument("--out", default="dvc_plots/offline.html")
    ap.add_argument("--png", action="store_true", help="also write <out dir>/<plot>.png")
    ap.add_argument("--all", action="store_true", help="DVCLive's one-metric plots too")
    args = ap.parse_args(argv)
    import vl_convert as vlc

    specs = plot_specs(args.revisions, args.all)
    if not specs:
        raise SystemExit("no plots: dvc.yaml declares none, or their files are missing (run the pipeline)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    title = f"GenSAR plots: {' vs '.join(args.revisions) or 'workspace'}"
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em} figure{margin:0 0 2em}</style>",
             f"<h1>{html.escape(title)}</h1>"]
    for name, spec in specs.items():
        parts.append(f"<figure><figcaption><code>{html.escape(name)}</code></figcaption>"
                     f"{vlc.vegalite_to_svg(spec)}</figure>")
        if args.png:
            safe = name.replace("/", "_")
            (out.parent / f"{safe}.png").write_bytes(vlc.vegalite_to_png(spec, scale=2))
    out.write_text("\n".join(parts))
    print(f"{len(specs)} plots -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
