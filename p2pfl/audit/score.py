"""Run the audit of one recorded run: the attacks on the coalition's view, then their scores against the truth.

Order matters and is fixed here: `reconstruct` and the membership attack's scores are computed
from a `view.View` (no ground truth reachable) before `truth` is read at all; the truth then
labels members and non-members and gives the true vectors to compare with.

Scores, per victim (every node outside the coalition), grouped by distance to the coalition
(direct neighbour, or 2+ hops):
- reconstruction of the vector x_j(r) the victim put into round r: cosine similarity and relative
  L2 error at the last round; the "centred" cosine, of both vectors minus the coalition's own
  mean vector of that round (which it has anyway: without centring, gossip's consensus makes every
  guess look good); and the cosine of the victim's local update u_j(r) = x_j(r) - sum_l W_jl x_l(r-1)
  (one round's training on its shard alone), mean and largest over the rounds;
- membership inference (`membership.LossAttack`) with the attacker's estimates of the victim's
  vector, a record's -loss averaged over the rounds (`attack`): members = the victim's shard, non-members = the task's held-out test set
  (same distribution, never trained on). AUC and TPR at 1% FPR with 95% bootstrap CIs;
- baselines, the same attack against the final public model (mean of the final models: what a
  deployment would publish) and against the never-trained initial model.

Owns: the audit's order, its result (`AuditResult`), its table and plots (RUN_DIR/audit/).
Must not touch: sockets, running anything.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from p2pfl.audit import membership
from p2pfl.audit.reconstruct import Estimates, reconstruct
from p2pfl.audit.truth import final_models, load_truth
from p2pfl.audit.view import View
from p2pfl.training import load_task

AUDIT_DIR = "audit"
CLASSES = ("neighbour", "2+ hops")


@dataclass
class AuditResult:
    """Everything the audit measured (audit/audit.json); `summary` per victim class."""

    run_dir: str
    label: str
    coalition: list[int]
    accuracy: float | None
    epsilon: float | None
    method: str
    victims: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


def _rel(est: np.ndarray, true: np.ndarray) -> float:
    nt = float(np.linalg.norm(true))
    return float(np.linalg.norm(est.astype(np.float64) - true) / nt) if nt > 0 else float("inf")


def attack(view: View, window: int = 0) -> tuple[Estimates, dict[int, dict[str, np.ndarray]]]:
    """The attack side only: estimates, and the membership scores of every candidate record for
    each victim ({victim: {"train": scores of every training record, "test": of every held-out
    record}}). A record's score is its -loss averaged over the estimates of the victim's vector in
    every round: each round is fresh evidence (its early rounds, trained on its shard from a
    nearly common start, most of all), and the attacker cannot know which round fits best. Labels
    come later, from the truth."""
    est = reconstruct(view, window)
    cfg = view.config
    task = load_task(cfg["task"], int(cfg["seed"]), int(cfg["nodes"]))
    mia = membership.LossAttack(task, int(cfg["seed"]))
    data = task.dataset
    scores = {}
    for j in range(view.nodes):
        vecs = [v for r in est.rounds if (v := est.of(j, r)) is not None]
        if j in view.coalition or not vecs:
            continue
        scores[j] = {"train": np.mean([mia.scores(v, data.x_train, data.y_train) for v in vecs], axis=0),
                     "test": np.mean([mia.scores(v, data.x_test, data.y_test) for v in vecs], axis=0)}
    return est, scores


def run_audit(run_dir: Path, window: int = 0, seed: int = 0) -> AuditResult:
    """Attack (from the view), then score (with the truth); writes RUN_DIR/audit/."""
    view = View(run_dir)
    est, scores = attack(view, window)
    # -- from here on the experimenter's knowledge: scoring only ------------------------------
    cfg = view.config
    n, coalition, last = view.nodes, view.coalition, max(est.rounds)
    truth = load_truth(run_dir, n)
    finals = final_models(run_dir, n)
    task = load_task(cfg["task"], int(cfg["seed"]), n)
    data = task.dataset
    mia = membership.LossAttack(task, int(cfg["seed"]))
    public = np.mean([finals[j] for j in range(n)], axis=0) - mia.reference
    base_scores = {"public": (mia.scores(public, data.x_train, data.y_train), mia.scores(public, data.x_test, data.y_test)),
                   "never": (mia.scores(np.zeros_like(public), data.x_train, data.y_train),
                             mia.scores(np.zeros_like(public), data.x_test, data.y_test))}
    near = set().union(*(view.neighbours(k) for k in coalition)) - set(coalition)
    summary_path = Path(run_dir) / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    result = AuditResult(str(run_dir), summary.get("label", cfg.get("label") or ""), list(coalition),
                         summary.get("final_acc_mean"), summary.get("epsilon_max"), est.method)

    def vector(i: int, r: int) -> np.ndarray | None:
        return truth[i].own.get(r) if i in coalition else est.of(i, r)

    pairs: dict[str, dict[str, list]] = {c: {"attack": [], "public": [], "never": []} for c in CLASSES}
    for j in sorted(scores):
        kind = CLASSES[0] if j in near else CLASSES[1]
        t = truth[j]
        x_true, x_est = t.own[last], est.of(j, last)
        centre = np.mean([truth[k].own[last] for k in coalition], axis=0)
        upd = []
        for r in est.rounds:
            row = view.mixing_row(r - 1, j) if r > 1 else {}
            true_prev = sum((w * truth[l].own[r - 1] for l, w in row.items()), np.zeros_like(x_true, np.float64))
            parts = [(w, vector(l, r - 1)) for l, w in row.items()]
            if any(v is None for _, v in parts) or est.of(j, r) is None:
                continue
            est_prev = sum((w * v for w, v in parts), np.zeros_like(x_true, np.float64))
            upd.append(_cos(est.of(j, r) - est_prev, truth[j].own[r] - true_prev))
        members = scores[j]["train"][t.shard]
        outside = scores[j]["test"]
        pairs[kind]["attack"].append((members, outside))
        for b, (tr, te) in base_scores.items():
            pairs[kind][b].append((tr[t.shard], te))
        ci = membership.bootstrap([(members, outside)], membership.auc, seed=seed + j)
        result.victims.append({
            "node": j, "class": kind, "exact": (j, last) in est.exact,
            "model_cosine": _cos(x_est, x_true), "model_rel_error": _rel(x_est, x_true),
            "centred_cosine": _cos(x_est - centre, x_true - centre),
            "update_cosine_mean": float(np.mean(upd)) if upd else None, "update_cosine_max": float(np.max(upd)) if upd else None,
            "mia_auc": ci.value, "mia_auc_ci": [ci.low, ci.high],
            "mia_tpr_at_1pct_fpr": membership.tpr_at_fpr(members, outside),
            "public_auc": membership.auc(base_scores["public"][0][t.shard], base_scores["public"][1]),
            "never_auc": membership.auc(base_scores["never"][0][t.shard], base_scores["never"][1]),
        })
    for kind in CLASSES:
        vs = [v for v in result.victims if v["class"] == kind]
        if not vs:
            continue
        row: dict[str, Any] = {"victims": len(vs)}
        for key in ("model_cosine", "model_rel_error", "centred_cosine", "update_cosine_mean"):
            vals = [v[key] for v in vs if v[key] is not None]
            row[key] = float(np.mean(vals)) if vals else None
        maxes = [v["update_cosine_max"] for v in vs if v["update_cosine_max"] is not None]
        row["update_cosine_max"] = float(np.max(maxes)) if maxes else None
        for name, got in pairs[kind].items():
            a = membership.bootstrap(got, membership.auc, seed=seed)
            tpr = membership.bootstrap(got, membership.tpr_at_fpr, seed=seed)
            row[f"{name}_auc"], row[f"{name}_auc_ci"] = a.value, [a.low, a.high]
            row[f"{name}_tpr"], row[f"{name}_tpr_ci"] = tpr.value, [tpr.low, tpr.high]
        row["max_auc"] = float(max(v["mia_auc"] for v in vs))
        result.summary[kind] = row
    write_audit(Path(run_dir) / AUDIT_DIR, result, view)
    return result


def table(results: list[AuditResult]) -> str:
    """A Markdown table: one row per run and victim class."""
    head = ("| run | coalition | victims | acc | eps | model cos | centred cos | update cos (mean/max) | rel err | "
            "MIA AUC [95% CI] | max AUC | TPR@1%FPR | public-model AUC | never-trained AUC |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for res in results:
        for kind, s in res.summary.items():
            f = lambda v, d=3: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
            lines.append(
                f"| {res.label} | {','.join(map(str, res.coalition))} | {kind} ({s['victims']}) | {f(res.accuracy)} | "
                f"{f(res.epsilon, 2)} | {f(s['model_cosine'])} | {f(s['centred_cosine'])} | "
                f"{f(s['update_cosine_mean'])}/{f(s['update_cosine_max'])} | {f(s['model_rel_error'])} | "
                f"{s['attack_auc']:.3f} [{s['attack_auc_ci'][0]:.3f}, {s['attack_auc_ci'][1]:.3f}] | {s['max_auc']:.3f} | "
                f"{s['attack_tpr']:.3f} | {s['public_auc']:.3f} | {s['never_auc']:.3f} [{s['never_auc_ci'][0]:.3f}, "
                f"{s['never_auc_ci'][1]:.3f}] |")
    return "\n".join(lines) + "\n"


def write_audit(out: Path, result: AuditResult, view: View) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    (out / "audit.md").write_text(table([result]))
    _plot(out / "audit_mia.png", result)


def _plot(path: Path, result: AuditResult) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    vs = result.victims
    xs = np.arange(len(vs))
    colours = ["tab:red" if v["class"] == CLASSES[0] else "tab:blue" for v in vs]
    err = np.array([[v["mia_auc"] - v["mia_auc_ci"][0], v["mia_auc_ci"][1] - v["mia_auc"]] for v in vs]).T
    ax.errorbar(xs, [v["mia_auc"] for v in vs], yerr=err, fmt="none", ecolor="grey", lw=0.8)
    ax.scatter(xs, [v["mia_auc"] for v in vs], c=colours, s=14, zorder=3, label="attack (red: neighbour, blue: 2+ hops)")
    ax.plot(xs, [v["public_auc"] for v in vs], "k--", lw=0.8, label="final public model")
    ax.plot(xs, [v["never_auc"] for v in vs], "k:", lw=0.8, label="never-trained model")
    ax.set_xticks(xs, [str(v["node"]) for v in vs], fontsize=6)
    ax.set_xlabel("victim node")
    ax.set_ylabel("membership AUC")
    ax.set_title(f"{result.label}: coalition {result.coalition}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
