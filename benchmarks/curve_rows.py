"""The rows of a learning curve (benchmarks/learning_curve.py): read and appended as JSONL, the
table (.md) and picture (.png) drawn from every row of a file, and two arms' paired difference.

    python benchmarks/curve_rows.py benchmarks/results/fer2013_curve.jsonl \
        --difference simclr+semantic+open simclr+random+open   # the table, to standard output
    python benchmarks/curve_rows.py benchmarks/results/fer2013_curve.jsonl \
        --readme simclr simclr+semantic+open                    # README lines, one per arm
    (--difference A B --line: the difference as a README line)
"""
import argparse
import json
import math
import os
import statistics
import sys


def read_rows(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def append_row(path, row):
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())
    print(json.dumps(row), flush=True)


def summarise(rows):
    """-> {arm: {images: [rows]}}."""
    out = {}
    for r in rows:
        out.setdefault(r["arm"], {}).setdefault(r["images"], []).append(r)
    return out


def mean_std(values):
    """-> (mean, std over the values, or None for a single value: one seed has no spread to show).
    """
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None)


def cell(values):
    """A table cell: mean ± std over the seeds, the mean alone for one seed, "–" where nothing was
    measured."""
    if not values:
        return "–"
    m, s = mean_std(values)
    return f"{m:.1f}" if s is None else f"{m:.1f} ± {s:.1f}"


def write_table(arms, split, path):
    """The table of the curves: one line per arm and probe point, mean ± std over the seeds; the
    collapse monitor's column where some row has it (train.py's embedding_std_sqrt_d and
    embedding_cosine at that epoch)."""
    monitored = any("embedding_cosine" in r for points in arms.values() for rs in points.values()
                    for r in rs)
    lines = [f"| arm | epoch | images seen | seeds | {split} linear probe (%) | {split} k-NN (%) | "
             f"{split} without copies in train: linear / k-NN (%) | "
             "hit rate / random / central (%) | FFL's share of the ResNet's gradient (%) |"
             + (" collapse monitor: std × √d / mean cosine |" if monitored else ""),
             "|---|---|---|---|---|---|---|---|---|" + ("---|" if monitored else "")]
    for arm, points in arms.items():
        for images in sorted(points):
            rs = points[images]
            lin, knn, lin_d, knn_d = (cell([100 * r[k] for r in rs if k in r])
                                      for k in ("linear", "knn", "linear_dedup", "knn_dedup"))
            dedup = f"{lin_d} / {knn_d}" if lin_d != "–" else "–"
            hit = ""
            if "hit_rate" in rs[0]:
                hit = " / ".join(f"{statistics.mean(100 * r[k] for r in rs):.1f}"
                                 for k in ("hit_rate", "hit_rate_random", "hit_rate_central"))
            share = cell([100 * r["ffl_grad_share"] for r in rs if "ffl_grad_share" in r])
            lines.append(f"| {arm} | {rs[0]['epoch']} | {images:,} | {len(rs)} | {lin} | {knn} | "
                         f"{dedup} | {hit} | {share if share != '–' else ''} |")
            if monitored:
                spread = [r for r in rs if "embedding_cosine" in r]
                figures = [f"{statistics.mean(r[k] for r in spread):.2f}"
                           for k in ("embedding_std_sqrt_d", "embedding_cosine")] if spread else []
                lines[-1] += f" {' / '.join(figures)} |"
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


# colour says the variant, the line says the GFL: an arm and its BYOL or SimCLR twin share a colour
VARIANT_COLOURS = {"": "tab:blue", "+semantic": "tab:red", "+random": "tab:green",
                   "+semantic+open": "tab:purple", "+random+open": "tab:olive"}
OTHER_COLOURS = ["tab:brown", "tab:cyan", "tab:orange", "navy", "teal", "maroon", "gold", "indigo"]
BASELINE_COLOURS = {"random trunk": "tab:gray", "random trunk, BN statistics": "black",
                    "pixels 32x32": "tab:pink"}


def style(arm, k):
    """Matplotlib keywords of arm number k: SimCLR solid, BYOL dash-dot, supervised dotted black;
    a variant (+semantic, +random, +open) in one colour across GFLs; other arms their own colour."""
    gfl, _, variant = arm.partition("+")
    variant = "+" + variant if variant else ""
    if arm == "supervised":
        return dict(color="black", ls=":", marker="s")
    if gfl in ("simclr", "byol") and variant in VARIANT_COLOURS:
        return dict(color=VARIANT_COLOURS[variant], ls="-" if gfl == "simclr" else "-.",
                    marker="o" if gfl == "simclr" else "^")
    return dict(color=OTHER_COLOURS[k % len(OTHER_COLOURS)], ls="-." if "byol" in arm else "-",
                marker="D")


def images_label(x):
    """28.7k, 229k, 1M: three significant figures at most."""
    return f"{x / 1000:.3g}k" if x < 1e6 else f"{x / 1e6:.3g}M"


def seeds_of(points):
    """-> {images: the sorted seeds measured there}."""
    return {x: tuple(sorted(r.get("seed", 0) for r in rs)) for x, rs in points.items()}


def label(arm, points):
    """The legend's name of an arm: with its seeds, and where the seed sets differ between points,
    each point's."""
    sets = seeds_of(points)
    if len(set(sets.values())) == 1:
        (seeds,) = set(sets.values())
        return f"{arm} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
    return f"{arm} (seeds differ by point; joined where equal)"


def draw_baselines(ax, arms, key):
    """A file of budget-free baselines only: one bar each, ± std over its seeds."""
    names = [a for a, p in arms.items() if key in next(iter(p.values()))[0]]
    ms = [mean_std([100 * r[key] for r in arms[a][0]]) for a in names]
    ax.barh(range(len(names)), [m for m, _ in ms], xerr=[s or 0.0 for _, s in ms], capsize=3,
            color=[BASELINE_COLOURS.get(a, "tab:gray") for a in names])
    ax.set_yticks(range(len(names)), [label(a, arms[a]) for a in names])
    for y, (m, sd) in enumerate(ms):  # the value right of its error bar
        ax.text(m + (sd or 0.0), y, f"  {m:.1f}", va="center", fontsize=8)
    ax.set_xlim(0, 1.15 * max(m + (sd or 0.0) for m, sd in ms))
    ax.invert_yaxis()


def draw(path):
    """The curves of every row in `path`: <path>.png (linear probe and k-NN against images seen) and
    <path>.md."""
    rows = read_rows(path)
    arms = summarise(rows)
    stem = os.path.splitext(path)[0]
    split = "test" if any(r.get("split") == "test" for r in rows) else "val"
    write_table(arms, split, stem + ".md")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no picture drawn")
        return
    with_hits = any("hit_rate" in r for r in rows)
    ticks = sorted({x for points in arms.values() for x in points if x > 0})
    several = any(len(rs) > 1 for points in arms.values() for rs in points.values())
    titles = ("linear probe (cached features)", "k-NN (k = 20)")
    dataset = os.path.basename(stem).split("_")[0].upper()
    if not ticks:  # baselines only: bars, not lines against a budget no row has
        fig, axes = plt.subplots(1, 2, figsize=(11, 1.2 + 0.5 * len(arms)), dpi=110)
        for ax, key, title in zip(axes, ("linear", "knn"), titles):
            draw_baselines(ax, arms, key)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel(f"{split} accuracy (%)")
        spread = "; bars: ± std over seeds" if several else ""
        fig.suptitle(f"{dataset}, {split} split: the budget-free baselines{spread}", fontsize=10)
        fig.tight_layout()
    else:
        fig, legend_height = draw_curves(plt, arms, split, ticks, with_hits, titles, rows)
        baselines = any(list(p) == [0] for p in arms.values())
        spread = "; bars and bands: ± std over seeds" if several else ""
        fig.suptitle(f"{dataset}, {split} split, against images seen{spread}"
                     + ("; dashed: baselines" if baselines else ""), fontsize=10)
        fig.tight_layout(rect=(0, legend_height, 1, 1))
    # two runs may write the same picture: each its own temporary
    tmp = f"{stem}.{os.getpid()}.tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, stem + ".png")


def draw_curves(plt, arms, split, ticks, with_hits, titles, rows):
    """The panels of a learning curve: linear probe and k-NN (and the landmark hit rate where rows
    have it) against images seen; the legend under them, off the data. -> the figure and the share
    of its height the legend takes."""
    curves = [a for a, p in arms.items() if any(x > 0 for x in p)]
    n_legend = math.ceil((len(arms) + (2 if with_hits else 0)) / 4)
    fig, axes = plt.subplots(1, 3 if with_hits else 2,
                             figsize=(15 if with_hits else 11, 4.2 + 0.25 * n_legend), dpi=110)
    for ax, key, title in zip(axes, ("linear", "knn"), titles):
        for k, (arm, points) in enumerate(arms.items()):
            xs = sorted(x for x in points if key in points[x][0])
            if xs == [0]:  # a baseline: a horizontal line, its seeds' spread (± std) as a band
                m, s = mean_std([100 * r[key] for r in points[0]])
                colour = BASELINE_COLOURS.get(arm, "tab:gray")
                ax.axhline(m, ls="--", lw=1, color=colour, label=label(arm, points))
                if s:
                    ax.axhspan(m - s, m + s, color=colour, alpha=0.12, lw=0)
            elif xs:
                draw_arm(ax, arm, points, xs, key, style(arm, curves.index(arm)))
        ax.set_ylabel(f"{split} accuracy (%)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    if with_hits:
        draw_hit_rates(axes[2], arms, rows, curves)
    for ax in axes:  # one x axis for every panel: the budgets measured, on a log scale
        ax.set_xscale("log")
        shown = [x for i, x in enumerate(ticks)  # a tick too close to the next one is left out
                 if i == len(ticks) - 1 or ticks[i + 1] / x > 1.25]
        ax.set_xticks(shown, [images_label(x) for x in shown])
        ax.minorticks_off()
        ax.set_xlabel("images seen in pretraining (log scale)")
    labels = {}
    for ax in axes:
        for h, text in zip(*ax.get_legend_handles_labels()):
            labels.setdefault(text, h)
    fig.legend(list(labels.values()), list(labels), loc="lower center", ncol=4, fontsize=8,
               frameon=False)
    return fig, 0.25 * n_legend / fig.get_figheight() + 0.02


def draw_arm(ax, arm, points, xs, key, kw):
    """One arm's curve, ± std over its seeds; points measured on different seed sets are not joined
    (each run of equal seed sets is a line of its own)."""
    sets = seeds_of(points)
    run, runs = [xs[0]], []
    for x in xs[1:]:
        if sets[x] == sets[run[-1]]:
            run.append(x)
        else:
            runs.append(run)
            run = [x]
    runs.append(run)
    for i, run in enumerate(runs):
        ms = [mean_std([100 * r[key] for r in points[x]]) for x in run]
        ax.errorbar(run, [m for m, _ in ms], yerr=[s or 0.0 for _, s in ms], ms=4, capsize=3,
                    label=label(arm, points) if i == 0 else None, **kw)


def draw_hit_rates(ax, arms, rows, curves):
    controls = next(r for r in rows if "hit_rate_random" in r)
    ax.axhline(100 * controls["hit_rate_random"], ls=":", color="grey", label="random masking")
    ax.axhline(100 * controls["hit_rate_central"], ls="--", color="black",
               label="fixed mask, central patches")
    for arm, points in arms.items():
        xs = sorted(x for x in points if "hit_rate" in points[x][0])
        kw = style(arm, curves.index(arm)) if arm in curves else dict(color="tab:gray")
        if xs == [0]:  # the masking as initialised: where training starts from
            start = statistics.mean(r["hit_rate"] for r in points[0])
            ax.axhline(100 * start, ls="-.", color=kw["color"], label=f"{arm}, untrained")
        elif xs:
            rates = [100 * statistics.mean(r["hit_rate"] for r in points[x]) for x in xs]
            ax.plot(xs, rates, **kw)
    ax.set_title("landmark hit rate of semantic masking (val)", fontsize=10)
    ax.set_ylabel("landmarks in visible patches (%)")
    ax.grid(alpha=0.3)


# ----------------------------------------------------------------------------- two arms compared


def by_seed(rows, arm, epoch, key):
    """{seed: value of `key`} of one arm at one probe point."""
    return {r["seed"]: r[key] for r in rows
            if r["arm"] == arm and r["epoch"] == epoch and key in r}


def common_seeds(rows, a, b, epoch, key="linear"):
    """The seeds with `key` measured in both arms at `epoch`, in order."""
    return sorted(set(by_seed(rows, a, epoch, key)) & set(by_seed(rows, b, epoch, key)))


def paired_difference(rows, a, b, epoch, key):
    """a − b on `key` at `epoch`, per seed measured in both arms (in points, seed order) -> list."""
    xa, xb = by_seed(rows, a, epoch, key), by_seed(rows, b, epoch, key)
    return [100 * (xa[s] - xb[s]) for s in common_seeds(rows, a, b, epoch, key)]


def points(d):
    """A difference in points with its sign, 0.0 without one."""
    return f"{d:+.1f}".replace("+0.0", "0.0").replace("-0.0", "0.0")


def signed(values):
    """Signed mean ± std of differences in points ("–" where there are none)."""
    if not values:
        return "–"
    m, s = mean_std(values)
    return points(m) if s is None else f"{points(m)} ± {s:.1f}"


def difference_table(rows, a, b):
    """Markdown: a and b per epoch over the seeds measured in both (mean ± std, linear / k-NN, and
    the FFL's share of the ResNet's gradient), a − b per seed and its mean ± std, with and without
    the held-out faces copied from Training."""
    epochs = sorted({r["epoch"] for r in rows if r["arm"] in (a, b) and r["epoch"] > 0})
    lines = [f"| epoch | seeds | A = {a} | B = {b} | A − B, per seed | mean ± std | "
             "mean ± std without copies |", "|---|---|---|---|---|---|---|"]
    for e in epochs:
        seeds = common_seeds(rows, a, b, e)
        if not seeds:
            continue
        arms = []
        for arm in (a, b):
            lin, knn = (cell([100 * by_seed(rows, arm, e, k)[s] for s in seeds])
                        for k in ("linear", "knn"))
            share = [by_seed(rows, arm, e, "ffl_grad_share").get(s) for s in seeds]
            share = "" if None in share else f" ({100 * statistics.mean(share):.0f} %)"
            arms.append(f"{lin} / {knn}{share}")
        lin, knn = (paired_difference(rows, a, b, e, k) for k in ("linear", "knn"))
        per_seed = " / ".join(", ".join(map(points, ds)) for ds in (lin, knn))
        dedup = " / ".join(signed(paired_difference(rows, a, b, e, k))
                           for k in ("linear_dedup", "knn_dedup"))
        lines.append(f"| {e} | {', '.join(map(str, seeds))} | {arms[0]} | {arms[1]} | "
                     f"{per_seed} | {signed(lin)} / {signed(knn)} | {dedup} |")
    return "\n".join(lines) + "\n"


def readme_line(rows, arm, epochs):
    """One arm's README line: linear / k-NN, mean±std over its seeds at each epoch ('–' where not
    measured), labelled with its seeds and the epochs that have fewer."""
    cells, seeds = [], {}
    for e in epochs:
        lin, knn = (cell([100 * v for v in by_seed(rows, arm, e, k).values()])
                    for k in ("linear", "knn"))
        cells.append("–" if lin == "–" else f"{lin} / {knn}".replace(" ± ", "±"))
        if lin != "–":
            seeds[e] = tuple(sorted(by_seed(rows, arm, e, "linear")))
    every = max(seeds.values(), key=len, default=())
    fewer = {}
    for e, s in seeds.items():
        if s != every:
            fewer.setdefault(s, []).append(str(e))
    label = f"{arm}, seed{'s' if len(every) > 1 else ''} {', '.join(map(str, every))}"
    if fewer:
        label += " (" + "; ".join(f"epoch{'s' if len(es) > 1 else ''} {', '.join(es)}: "
                                  f"{', '.join(map(str, s))}" for s, es in fewer.items()) + ")"
    return f"| {label} | " + " | ".join(cells) + " |"


def difference_line(rows, a, b, epochs):
    """README line of a − b, paired by seed: linear / k-NN, mean±std at each epoch."""
    cells, seeds = [], set()
    for e in epochs:
        lin, knn = (paired_difference(rows, a, b, e, k) for k in ("linear", "knn"))
        seeds |= set(common_seeds(rows, a, b, e))
        cells.append(f"{signed(lin)} / {signed(knn)}".replace(" ± ", "±") if lin else "–")
    return (f"| {a} − {b}, per seed, seeds {', '.join(map(str, sorted(seeds)))} | "
            + " | ".join(cells) + " |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("rows", help="a learning curve's .jsonl")
    p.add_argument("--difference", nargs=2, metavar=("A", "B"),
                   help="print A − B per epoch, paired by seed")
    p.add_argument("--readme", nargs="+", metavar="ARM", help="print README lines of these arms")
    p.add_argument("--line", action="store_true",
                   help="with --difference: the README line instead of the table")
    p.add_argument("--epochs", type=int, nargs="+", default=[1, 2, 4, 8, 14])
    args = p.parse_args(argv)
    rows = read_rows(args.rows)
    if not rows:
        p.exit(2, f"error: no rows in {args.rows}\n")
    if args.difference:
        missing = [a for a in args.difference if not any(r["arm"] == a for r in rows)]
        if missing:
            p.exit(2, f"error: no rows of {', '.join(missing)} in {args.rows}\n")
        if args.line:
            print(difference_line(rows, *args.difference, args.epochs))
        else:
            sys.stdout.write(difference_table(rows, *args.difference))
    for arm in args.readme or []:
        print(readme_line(rows, arm, args.epochs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
