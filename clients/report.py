"""Classification quality and latency figures, and their JSON / Markdown / PNG renderings."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class PathResult:
    """One evaluated path (e.g. classifier over gRPC): predictions, parity, latency."""

    name: str
    protocol: str
    model: str
    n: int
    accuracy: float
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]
    parity_disagreements: int
    parity_max_abs_diff: float
    latency_ms: dict[str, float]
    throughput_per_s: float
    requests: int
    batch_size: int
    concurrency: int
    errors: list[str] = field(default_factory=list)

    @property
    def parity_ok(self) -> bool:
        return self.parity_disagreements == 0 and not self.errors


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    cm = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(cm, (labels, predicted), 1)
    return cm


def per_class_scores(cm: np.ndarray, names: list[str]) -> dict[str, dict[str, float]]:
    scores = {}
    for i, name in enumerate(names):
        tp = float(cm[i, i])
        predicted = float(cm[:, i].sum())
        actual = float(cm[i, :].sum())
        scores[name] = {
            "precision": tp / predicted if predicted else 0.0,
            "recall": tp / actual if actual else 0.0,
            "support": actual,
        }
    return scores


def latency_summary(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {}
    ms = np.asarray(seconds) * 1000.0
    return {
        "p50": float(np.percentile(ms, 50)),
        "p90": float(np.percentile(ms, 90)),
        "p99": float(np.percentile(ms, 99)),
        "mean": float(ms.mean()),
        "max": float(ms.max()),
    }


def confusion_text(cm: np.ndarray, names: list[str]) -> str:
    width = max(5, *(len(n) for n in names), len(str(int(cm.max()))) + 1)
    head = "true\\pred".ljust(width + 4) + "".join(n.rjust(width) for n in names)
    rows = [head] + [names[i].ljust(width + 4) + "".join(str(int(v)).rjust(width) for v in row)
                     for i, row in enumerate(cm)]
    return "\n".join(rows)


def plot_confusion(cm: np.ndarray, names: list[str], title: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center",
                        color="white" if cm[i, j] > cm.max() / 2 else "black", fontsize=8)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_reports(results: list[PathResult], meta: dict[str, Any], out_dir: Path, names: list[str]) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "results": [asdict(r) | {"parity_ok": r.parity_ok} for r in results]}
    json_path = out_dir / "evaluation.json"
    json_path.write_text(json.dumps(payload, indent=2))
    lines = [
        "# Served-model evaluation",
        "",
        f"- dataset: {meta.get('dataset')} ({meta.get('n')} samples)",
        f"- reference: {meta.get('reference')} (offline ONNX Runtime accuracy {meta.get('offline_accuracy', 0):.4f})",
        f"- server: {meta.get('url_http')} (HTTP), {meta.get('url_grpc')} (gRPC)",
        "",
        "| path | protocol | model | accuracy | top-1 disagreements | max abs diff | p50 ms | p99 ms | images/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.protocol} | {r.model} | {r.accuracy:.4f} | {r.parity_disagreements} | "
            f"{r.parity_max_abs_diff:.2e} | {r.latency_ms.get('p50', 0):.2f} | {r.latency_ms.get('p99', 0):.2f} | "
            f"{r.throughput_per_s:.0f} |"
        )
    paths: dict[str, Path] = {"json": json_path}
    for r in results:
        cm = np.asarray(r.confusion)
        png = plot_confusion(cm, names, f"{r.name} over {r.protocol}: accuracy {r.accuracy:.4f}",
                             out_dir / f"confusion_{r.name}_{r.protocol}.png")
        paths[f"confusion_{r.name}_{r.protocol}"] = png
        lines += ["", f"## {r.name} over {r.protocol}", "", f"![confusion matrix]({png.name})", "", "```",
                  confusion_text(cm, names), "```", "", "| class | precision | recall | support |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['precision']:.3f} | {v['recall']:.3f} | {int(v['support'])} |"
                  for k, v in r.per_class.items()]
        if r.errors:
            lines += ["", "Errors:", *[f"- {e}" for e in r.errors[:20]]]
    md_path = out_dir / "evaluation.md"
    md_path.write_text("\n".join(lines) + "\n")
    paths["markdown"] = md_path
    return paths
