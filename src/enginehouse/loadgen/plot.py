"""The report's figure: output throughput and p99 TTFT against load, one line per target.

matplotlib is imported here, lazily, with the Agg backend: no display is needed and ``enginehouse``
starts without paying for it.
"""

from __future__ import annotations

import io
from typing import Any


def figure_png(report: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    x_label = (
        "concurrency (requests in flight)" if report["mode"] == "concurrency" else "request rate (req/s)"
    )
    fig, (ax_tp, ax_ttft) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for target in report["targets"]:
        rows = [r for r in report["results"] if r["target"] == target["label"] and r["completed"]]
        xs = [r["level"] for r in rows]
        ax_tp.plot(xs, [r["output_throughput"] for r in rows], marker="o", label=target["label"])
        ax_ttft.plot(xs, [r["ttft_ms"]["p99"] for r in rows], marker="o", label=target["label"])
    levels = report["levels"]
    for ax, title, unit in (
        (ax_tp, "Output throughput", "tokens/s"),
        (ax_ttft, "Time to first token, p99", "ms"),
    ):
        ax.set_title(title)
        ax.set_xlabel(x_label)
        ax.set_ylabel(unit)
        if len(levels) > 1 and min(levels) > 0 and max(levels) / min(levels) >= 8:
            ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [f"{x:g}" for x in levels])
        ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1] * 1.08, 1e-9))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    model = report.get("model") or ", ".join(sorted({t["model"] for t in report["targets"]}))
    fig.suptitle(f"enginehouse bench: {model}; {report['workload']['description']}", fontsize="medium")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
