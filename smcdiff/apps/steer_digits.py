"""Benchmark B of ``smcdiff steer``: class-conditional digits from the unconditional model.

**Target.** ``p(x | c) ∝ p(x)·p_ψ(c | x)^λ`` for each class ``c``: ``p`` the shipped unconditional
digits denoiser, ``p_ψ`` the shipped digits classifier (the one that *steers*, read on x̂0), λ = 1
by default — then the target is the model's own class-conditional law and ``Z = p(c)`` under the
model (about 0.1; every method that estimates ``log Z`` is checked against it in the table).

**Scoring — never with the network that steers.** A second :class:`~smcdiff.models.small_nets.DigitsClassifier`
trained only on the held-out test split (359 images, which neither the denoiser nor the steering
classifier saw), with another seed (:data:`SCORING_RECIPE`; its accuracy on the 1,438 training
images is in :func:`scoring_manifest`), gives: the *accuracy* (outputs it labels ``c``), the
Fréchet distance of its features to the real digits of class ``c`` (all 1,797 images: the
36 test images of one class are too few for a covariance), and *recall* (k-NN coverage of those
real digits, the diversity of the outputs), averaged over the classes.

**Setup.** Euler–Maruyama with 32 steps is the base sampler (cost 32; its unconditional FD-digits,
12.3, matches EDM Heun with 9 steps, 11.8); the methods of benchmark A at budgets ``b × 32`` (same
cost model; 1, 4, 16 — the 0.7 ms per digit and denoiser call of this CPU put 64× out of reach), 48 outputs for each of the classes 0, 2, 4, 6, 8, three seeds; verdicts
against best-of-N at the same budget by a paired t-test over seeds at 5 % (runs with the same seed
share their first noise), as in :mod:`smcdiff.apps.table`. The row ``real`` scores 48 real
training digits of each class the same way: the floor of every metric at this sample size.

    $ smcdiff steer digits --quick --out runs/steer       # < 2 min
    $ python -m smcdiff.apps.steer digits --out docs/steering
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from smcdiff.kernels import karras_sigmas

__all__ = [
    "SCORING_FILE",
    "SCORING_RECIPE",
    "ClassReward",
    "benchmark_digits",
    "load_scoring_classifier",
    "markdown_digits",
    "scoring_manifest",
    "summarise_digits",
    "train_scoring_classifier",
]

#: The recipe of ``smcdiff/assets/digits/scoring_classifier.pt`` (trained on the test split only).
SCORING_RECIPE = {"seed": 1234, "width": 32, "feature_dim": 32, "steps": 1500, "batch_size": 64, "lr": 1e-3}
SCORING_FILE = Path(__file__).resolve().parent.parent / "assets" / "digits" / "scoring_classifier.pt"


def train_scoring_classifier(path=SCORING_FILE, recipe: dict | None = None):
    """Train the scoring classifier on the held-out test split by :data:`SCORING_RECIPE`; save it."""
    from smcdiff.data import load_digits
    from smcdiff.models.small_nets import DigitsClassifier, save
    from smcdiff.models.training import train_classifier

    r = {**SCORING_RECIPE, **(recipe or {})}
    x, y = load_digits("test")
    net = DigitsClassifier(width=r["width"], feature_dim=r["feature_dim"],
                           generator=torch.Generator().manual_seed(r["seed"]))
    net, _ = train_classifier(net, x, y, steps=r["steps"], batch_size=r["batch_size"], lr=r["lr"],
                              generator=torch.Generator().manual_seed(r["seed"] + 1))
    save(net, path)
    return net.eval().requires_grad_(False)


def load_scoring_classifier(path=SCORING_FILE):
    """The shipped scoring classifier (eval mode, no gradients)."""
    from smcdiff.models.small_nets import load

    return load(path).eval().requires_grad_(False)


def scoring_manifest(classifier=None) -> dict:
    """Accuracies of the scoring and the steering classifiers on both splits (the scorer saw only "test")."""
    from smcdiff.data import load_digits
    from smcdiff.models.pretrained import load_digits_models

    nets = {"scoring": classifier or load_scoring_classifier(), "steering": load_digits_models().classifier}
    out = {}
    with torch.no_grad():
        for split in ("train", "test"):
            x, y = load_digits(split)
            for name, net in nets.items():
                out[f"{name}_{split}_accuracy"] = float((net(x).argmax(1) == y).float().mean())
    return out


class ClassReward:
    """``r(x0) = λ·log softmax(classifier(x0))[c]``: ``x0 : (N, 1, 8, 8)`` → ``(N,)`` float64
    (differentiable; the classifier runs in float32)."""

    def __init__(self, classifier, c: int, lam: float = 1.0):
        self.classifier, self.c, self.lam = classifier, int(c), float(lam)

    def __call__(self, x0, **cond):
        return self.lam * torch.log_softmax(self.classifier(x0), dim=1)[:, self.c].to(torch.float64)

    def __repr__(self) -> str:
        return f"ClassReward(c={self.c}, lam={self.lam})"


def _class_scores(features, x, ref_feats, c: int) -> dict:
    from smcdiff.metrics.fid import feature_statistics, frechet_distance
    from smcdiff.metrics.samples import precision_recall

    x = x.to(torch.float32).clamp(-1, 1)
    feats = features(x)
    acc = float((features.classes_of(feats) == c).float().mean())
    mu, sig = feature_statistics(feats.numpy())
    mu_r, sig_r = feature_statistics(ref_feats.numpy())
    pr = precision_recall(ref_feats, feats, k=3)
    return {"accuracy": acc, "fd": max(frechet_distance(mu, sig, mu_r, sig_r), 0.0), "recall": float(pr.recall),
            "precision": float(pr.precision)}


def benchmark_digits(quick: bool = False, seeds=None, methods=None, budgets=None, classes=None, num_per_class=None,
                     steps: int | None = None, lam: float = 1.0, progress=None) -> list[dict]:
    """Run benchmark B; one row per (method, budget, seed) with class-averaged scores."""
    from smcdiff.apps.steer import EXACT_METHODS, cost_of, plan
    from smcdiff.data import load_digits
    from smcdiff.metrics.fd_digits import DigitsFeatures
    from smcdiff.models.pretrained import load_digits_models

    seeds = range(seeds or (2 if quick else 3)) if not isinstance(seeds, (tuple, list)) else seeds
    methods = methods or (("best-of-n", "fk", "tds") if quick else ("best-of-n", "sir", "fk", "tds", "das", "dts"))
    budgets = budgets or ((1, 4) if quick else (1, 4, 16))
    classes = classes if classes is not None else ((3,) if quick else (0, 2, 4, 6, 8))
    num_per_class = num_per_class or (32 if quick else 48)
    steps = steps or (16 if quick else 32)
    models, scorer = load_digits_models(), load_scoring_classifier()
    features = DigitsFeatures(scorer)
    x_all, y_all = load_digits("all")
    x_train, y_train = load_digits("train")
    refs = {c: features(x_all[y_all == c]) for c in classes}
    sigmas, rows = karras_sigmas(steps), []
    for seed in seeds:
        for mname in ("real",) + tuple(methods):
            for budget in (budgets if mname != "real" else (0,)):
                start, K = time.perf_counter(), 0 if mname == "real" else plan(mname, budget, steps)
                per_class, costs, log_z = [], [], []
                for c in classes:
                    g = torch.Generator().manual_seed(1000 * seed + c)
                    if mname == "real":  # the floor: real training digits of class c, as many as the outputs
                        pool = x_train[y_train == c]
                        x = pool[torch.randperm(pool.shape[0], generator=g)[:num_per_class]]
                        per_class.append(_class_scores(features, x, refs[c], c))
                        costs.append(0.0)
                        continue
                    reward = ClassReward(models.classifier, c, lam)
                    res = EXACT_METHODS[mname][0](models.denoiser, sigmas, K, reward=reward, num_samples=num_per_class,
                                                  shape=(1, 8, 8), generator=g)
                    per_class.append(_class_scores(features, res.x, refs[c], c))
                    costs.append(cost_of(res))
                    le = res.log_evidence
                    if le is not None and bool(torch.isfinite(le).all()):
                        log_z.append(float(torch.logsumexp(le, 0) - math.log(le.shape[0])))
                row = {"method": mname, "budget": budget, "seed": seed, "particles": K, "cost": sum(costs) / len(costs) / steps,
                       "log_z": sum(log_z) / len(log_z) if log_z else math.nan,
                       "seconds": round(time.perf_counter() - start, 2)}
                row.update({k: sum(s[k] for s in per_class) / len(per_class) for k in per_class[0]})
                rows.append(row)
                if progress:
                    progress(row)
    return rows


def summarise_digits(rows: list[dict]) -> list[dict]:
    """Mean ± s.e. over seeds per (method, budget), and a paired t-test against best-of-N at that budget."""
    from scipy.stats import t as student_t

    from smcdiff.apps.steer import summarise

    metrics = ("cost", "accuracy", "fd", "recall", "precision", "log_z")
    out = summarise([dict(r, problem="digits") for r in rows], metrics)
    for s in out:
        base = {r["seed"]: r for r in rows if r["method"] == "best-of-n" and r["budget"] == s["budget"]}
        mine = {r["seed"]: r for r in rows if r["method"] == s["method"] and r["budget"] == s["budget"]}
        seeds = sorted(set(base) & set(mine))
        for k, higher in (("accuracy", True), ("fd", False), ("recall", True)):
            if s["method"] == "best-of-n" or len(seeds) < 2:
                s[k + "_vs_best"] = "—"
                continue
            d = torch.tensor([mine[i][k] - base[i][k] for i in seeds], dtype=torch.float64)
            se = float(d.std()) / math.sqrt(len(seeds))
            sig = se > 0 and abs(float(d.mean())) > student_t.ppf(0.975, len(seeds) - 1) * se
            word = ("better" if (float(d.mean()) > 0) == higher else "worse") if sig else "≈"
            s[k + "_vs_best"] = f"{word} ({float(d.mean()):+.3f} ± {se:.3f})"
    return out


def markdown_digits(summary: list[dict]) -> str:
    """Benchmark B as a markdown table."""
    from smcdiff.apps.steer import fmt_estimate

    header = ("| method | budget | K | cost | accuracy ↑ | FD ↓ | precision ↑ | recall ↑ | log Ẑ (≈ log p(c)) "
              "| acc. vs best-of-N | FD vs best-of-N |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        budget = "—" if s["method"] == "real" else f"{s['budget']}×"
        lines.append(f"| {s['method']} | {budget} | {s['particles']} | {s['cost']:.2f} | "
                     f"{fmt_estimate(s['accuracy'], s['accuracy_se'])} | {fmt_estimate(s['fd'], s['fd_se'], 1)} | "
                     f"{fmt_estimate(s['precision'], s['precision_se'])} | {fmt_estimate(s['recall'], s['recall_se'])} | {fmt_estimate(s['log_z'], s['log_z_se'], 2)} | "
                     f"{s['accuracy_vs_best']} | {s['fd_vs_best']} |")
    return "\n".join(lines) + "\n"
