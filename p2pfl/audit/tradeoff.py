"""Attack success against accuracy, a point per run (`compare --audit`, `p2pfl audit DIR...`).

Owns: the trade-off plot and the side-by-side table file of several audits. Must not touch:
running or attacking anything (it is handed `score.AuditResult`s).
"""

from __future__ import annotations

from pathlib import Path

from p2pfl.audit.score import CLASSES, AuditResult, table

PLOT = "privacy_tradeoff.png"
TABLE = "privacy_audit.md"
MIN_VICTIMS = 4  # fewer neighbours than this: plot the victims 2+ hops away instead


def write(out: Path, results: list[AuditResult]) -> list[Path]:
    """privacy_audit.md (every run's audit table) and privacy_tradeoff.png; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    (out / TABLE).write_text(table(results))
    plot(out / PLOT, results)
    return [out / TABLE, out / PLOT]


def _nearest(res: AuditResult) -> dict | None:
    """The summary of the direct neighbours, unless they are too few to say much (a star's leaf
    has one, the hub): then of the victims 2+ hops away."""
    near, far = res.summary.get(CLASSES[0]), res.summary.get(CLASSES[1])
    return near if near is not None and (near["victims"] >= MIN_VICTIMS or far is None) else far


def plot(path: Path, results: list[AuditResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    never = []
    for n, res in enumerate(results):
        s = _nearest(res)
        if s is None or res.accuracy is None:
            continue
        lo, hi = s["attack_auc_ci"]
        ax.errorbar([res.accuracy], [s["attack_auc"]], yerr=[[s["attack_auc"] - lo], [hi - s["attack_auc"]]], fmt="o", capsize=3)
        eps = "" if res.epsilon is None else f" (eps {res.epsilon:.1f})"
        ax.annotate(res.label + eps, (res.accuracy, s["attack_auc"]), fontsize=7, textcoords="offset points",
                    xytext=(8, 18 * (n % 3) - 18), ha="left" if res.accuracy < 0.6 else "right")  # fan out close points
        never.append(s["never_auc"])
    if never:
        ax.axhline(sum(never) / len(never), color="k", ls=":", lw=0.8, label="never-trained model")
        ax.legend(fontsize=7)
    ax.set_xlabel("final test accuracy (mean over nodes)")
    ax.set_ylabel("membership AUC (direct neighbours; a star: the other leaves)")
    ax.set_title("privacy vs accuracy: one point per variant (95% CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
