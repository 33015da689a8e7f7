"""What the command line prints after a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TOP = 10


def _row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()


def table(header: list[str], rows: list[list[str]]) -> str:
    """A plain fixed-width table."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [_row(header, widths), _row(["-" * w for w in widths], widths)]
    lines += [_row(row, widths) for row in rows]
    return "\n".join(lines)


def print_detect(report: dict[str, Any], out: Path) -> None:
    """The detection summary: one line per ranking, then the most suspicious examples."""
    print(
        f"{report['n_train']} training / {report['n_val']} validation examples, "
        f"{report['num_classes']} classes, noise {report['noise_rate']:.0%}; "
        f"val accuracy {report['accuracy']['val']:.3f}"
    )
    methods = report["methods"]
    if report["ground_truth"]:
        header = ["ranking", "AUC", "@10%", "@20%", "@30%", "@50%", "inverse s"]
        rows = []
        for name, entry in sorted(methods.items(), key=lambda kv: -kv[1].get("auc", 0)):
            found = entry["detection"]
            rows.append(
                [name, f"{entry['auc']:.3f}"]
                + [f"{found[k]:.2f}" for k in ("0.1", "0.2", "0.3", "0.5")]
                + [f"{entry['seconds']['inverse']:.2f}"]
            )
        rate = report["noise_rate"]
        rows.append(["random", "0.500", "0.10", "0.20", "0.30", "0.50", ""])
        rows.append(
            ["perfect", f"{1 - rate / 2:.3f}"]
            + [f"{min(f / rate, 1.0):.2f}" for f in (0.1, 0.2, 0.3, 0.5)]
            + [""]
        )
        print("fraction of flipped labels found after inspecting the top x% of each ranking:")
        print(table(header, rows))
    else:
        print(report["note"])
    seconds = report["seconds"]
    phases = ", ".join(
        f"{k} {v:.1f}s" for k, v in seconds.items() if not k.startswith("inverse/")
    )
    print(f"time: {phases}")

    primary = _primary(report)
    shares = report["block_variance_share"].get(primary, {})
    if shares:
        top = sorted(shares.items(), key=lambda kv: -abs(kv[1]))[:3]
        named = ", ".join(f"{name} {share:.0%}" for name, share in top)
        print(f"blocks deciding {primary} (share of score variance): {named}")

    frame = report["table"]
    shown = [c for c in ("rank", "id", "label", "predicted", "flipped", "text") if c in frame]
    print(f"\nmost suspicious training examples (by {primary}):")
    print(frame[shown].head(TOP).to_string(index=False))
    print(f"\nwritten to {out}/: scores.parquet, scores.csv, report.json"
          + (", detection.png" if report["ground_truth"] else "")
          + (", suspicious.png" if (Path(out) / "suspicious.png").exists() else ""))


def _primary(report: dict[str, Any]) -> str:
    ranked = [m for m in report["methods"] if m != "loss" and not m.startswith("self:")]
    return ranked[0] if ranked else "loss"


def print_select(report: dict[str, Any], out: Path) -> None:
    """The selection summary, with the retraining comparison when it was run."""
    print(
        f"kept {report['n_selected']} of {report['n_train']} training examples "
        f"({report['fraction']:.0%}, most helpful by {report['method']}) -> "
        f"{report['selected_path']}"
    )
    evaluation = report.get("evaluation")
    if evaluation:
        accuracy = evaluation["accuracy"]
        rows = [
            ["influence-selected", f"{accuracy['influence']:.4f}"],
            [
                f"random (x{len(accuracy) - 2})",
                f"{evaluation['random_mean']:.4f} +- {evaluation['random_std']:.4f}",
            ],
            ["full set", f"{accuracy['full']:.4f}"],
        ]
        print(table(["retrained on", "val accuracy"], rows))
    print(f"written to {out}/")


def print_convergence(result: dict[str, Any]) -> None:
    """The convergence benchmark's ratio table and where its files went."""
    from hyperinf.bench.convergence import summary

    print(summary(result))
