"""How eval.py shows its results: the report of one evaluation (print_report), the verdict of a
trunk against two random ones (print_verdict), and the confusion matrix as text and as a picture.
Printing and drawing only: nothing here changes a number."""
import torch


def confusion_text(confusion, classes):
    w = max(8, max(len(c) for c in classes) + 1)
    lines = ["true \\ predicted".ljust(w) + "".join(c[:7].rjust(8) for c in classes)]
    lines += [c.ljust(w) + "".join(str(v).rjust(8) for v in row) for c, row in zip(classes,
                                                                                   confusion)]
    return "\n".join(lines)


def save_confusion_png(confusion, classes, path, title, history=None):
    """A picture of the confusion matrix and, beside it, the accuracy after each epoch of the probe
    or fine-tuning (the report's "history"), when matplotlib is installed: -> path, or None without
    matplotlib."""
    try:  # Figure, not pyplot: leaves a notebook's backend as it was
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None
    m = torch.tensor(confusion, dtype=torch.float)
    m = (m / m.sum(1, keepdim=True).clamp(min=1)).numpy()  # matplotlib takes numpy arrays
    side = 1 + 0.7 * len(classes)
    widths = [side, 4] if history else [side]  # inches: the matrix, then the accuracy curve
    fig = Figure(figsize=(sum(widths), side), layout="constrained")
    axes = fig.subplots(1, len(widths), squeeze=False, gridspec_kw={"width_ratios": widths})[0]
    ax = axes[0]
    ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if m[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted"), ax.set_ylabel("true"), ax.set_title(title, fontsize=10)
    if history:
        ax = axes[1]
        ax.plot(range(1, len(history) + 1), [100 * a for a in history], marker="o", markersize=3)
        ax.set_xlabel("epoch"), ax.set_ylabel("accuracy (%)"), ax.set_title("accuracy after each "
                                                                            "epoch", fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.savefig(path, dpi=120)
    return path


def print_report(r, classes, title):
    print(f"\n== {title}")
    if r["mode"] == "landmarks":
        print(f"landmark NME (inter-ocular): {100 * r['nme']:.2f} %   (mean-shape baseline: "
              f"{100 * r['nme_mean_shape']:.2f} %)   ridge lambda {r['ridge_lambda']:g} chosen on "
              "a train hold-out")
        if "hit_rate" in r:
            h, u = r["hit_rate"], r["hit_rate_untrained"]
            print("landmark hit rate (landmarks in visible patches, mean over the "
                  f"{len(h['per_group'])} groups): "
                  f"semantic masking {100 * h['semantic']:.1f} % (best group "
                  f"{100 * h['best_group']:.1f} %); "
                  f"the same model untrained {100 * u['semantic']:.1f} %; random masking "
                  f"{100 * h['random']:.1f} %")
        return
    if r.get("protocol") == "chosen":
        scores = ", ".join(f"{k} {100 * v:.1f} %" for k, v in r["probe_lr_scores"].items())
        print(f"probe lr {r['probe_lr']:g}, chosen on 10 % of train held out ({scores})")
    elif r.get("protocol") == "paper":
        print(f"the paper's probe protocol: augmented views, {r['epochs']} epochs, batch "
              f"{r['batch_size']}, lr {r['lr']:g}")
    if "last_epoch_accuracy" in r:
        print(f"accuracy, last epoch:  {100 * r['last_epoch_accuracy']:.2f} %")
        print(f"accuracy, best epoch:  {100 * r['best_epoch_accuracy']:.2f} % (epoch "
              f"{r['best_epoch']}; chosen on the scored split, as the reference code did on "
              "test: optimistic)")
    else:
        print(f"accuracy: {100 * r['accuracy']:.2f} %")
    if "accuracy_deduplicated" in r:
        print(f"accuracy without the {r['held_out_duplicates']} scored faces with a near-exact "
              f"copy in train (data.near_duplicates): {100 * r['accuracy_deduplicated']:.2f} %")
    print(f"mean class accuracy:   {100 * r['mean_class_accuracy']:.2f} %")
    print("per class: " + ", ".join(f"{c} {100 * a:.1f}" for c,
                                    a in r["per_class_accuracy"].items()))
    print(confusion_text(r["confusion"], classes))


# the accuracy the verdict reads from each probe's report
VERDICT_KEYS = (("linear", "last_epoch_accuracy"), ("knn", "accuracy"))


def verdict_margins(results):
    """compare_with_random's results (or its json) -> {probe: the pretrained trunk's accuracy minus
    the better random trunk's}, as fractions."""
    return {probe: results["pretrained"][probe][key]
            - max(results[name][probe][key] for name in ("random", "random, BN"))
            for probe, key in VERDICT_KEYS}


def print_verdict(results, data_name, split, n, epochs, chance):
    """compare_with_random's table and its one-line verdict: the pretrained trunk against the better
    of the two random trunks, by each probe."""
    print(f"\nverdict on {data_name} {split} ({n} images): linear probe (cached features, "
          f"{epochs} epochs, batch 256, lr chosen on 10 % of train held out) and k-NN "
          "(k = 20)")
    for name, r in results.items():
        print(f"  {name:10s} trunk: linear {100 * r['linear']['last_epoch_accuracy']:5.2f} % "
              f"(lr {r['linear']['probe_lr']:g}), k-NN {100 * r['knn']['accuracy']:5.2f} %")
    print("  (random, BN: the random trunk with BatchNorm statistics recomputed on the training "
          f"faces); chance {100 * chance:.2f} %")
    margins = [100 * m for m in verdict_margins(results).values()]
    verdict = ("above" if min(margins) > 0 else "below" if max(margins) < 0 else
               "not clearly above")
    print(f"  pretrained − better random trunk: linear {margins[0]:+.2f}, k-NN {margins[1]:+.2f} "
          f"points: the pretrained trunk is {verdict} both random trunks")
