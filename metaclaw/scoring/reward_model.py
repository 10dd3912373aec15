"""The adaptive reward model: weighted L2 logistic regression with a Laplace posterior (pure).

Why this model: it must retrain in seconds on a CPU from a few hundred to tens of thousands of
labels, and triage needs an *honest* per-prediction uncertainty, not just a probability. A
logistic regression fitted by Newton's method (IRLS) gives both at once: the Hessian at the
optimum is the precision of a Gaussian (Laplace) posterior over the weights, so each
prediction's logit has a variance x·Σ·x, large for turns unlike anything labelled yet. The
probability used for triage is the posterior-averaged one (MacKay's probit approximation),
which shrinks towards 0.5 exactly where the model has not seen enough. Bigger heads (an MLP, a
head on the policy's hidden states) buy little over the static embeddings and lose that
closed-form uncertainty; see docs/scoring.md for the measurement.

No ledger, no files: `fit`, `predict` and the (de)serialisation are functions of arrays, so the
triage and the metrics are testable on their own; `adaptive.py` does the I/O.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass

import numpy as np

NEWTON_STEPS = 25
TOLERANCE = 1e-4
COMPONENTS = 256  # principal directions kept of the embedding columns
PCA_ROWS = 1500  # rows the principal directions are estimated from (a sample beyond that)


@dataclass(frozen=True)
class LogisticModel:
    """Standardisation, projection, weights and posterior covariance of the coefficients.

    The first `keep` columns (the few lexical features) enter as they are; the rest (the
    embeddings, ~1,500 columns) through their top principal directions (`basis`), which keeps
    a Newton step and the per-prediction variance cheap and the posterior well determined."""

    mean: np.ndarray  # per feature, from the training set
    scale: np.ndarray
    keep: int
    basis: np.ndarray  # (d_in - keep, k)
    weights: np.ndarray  # (keep + k + 1,): bias last
    covariance: np.ndarray  # inverse Hessian of the penalised loss at the optimum

    @property
    def digest(self) -> str:
        """A short content hash: the model's identity in versions and reward ids."""
        h = hashlib.sha256()
        for a in (self.mean, self.scale, self.basis, self.weights):
            h.update(np.ascontiguousarray(a, np.float64).tobytes())
        return h.hexdigest()[:12]


@dataclass(frozen=True)
class Predictions:
    """Per turn: P(good) averaged over the posterior, the logit's std and the confidence."""

    p: np.ndarray
    logit_std: np.ndarray

    @property
    def confidence(self) -> np.ndarray:
        """How sure the model is of the sign it predicts: max(p, 1 - p), in [0.5, 1]."""
        return np.maximum(self.p, 1.0 - self.p)

    @property
    def value(self) -> np.ndarray:
        """The expected reward in [-1, 1] under the model (2p - 1)."""
        return 2.0 * self.p - 1.0


def _design(
    mean: np.ndarray, scale: np.ndarray, keep: int, basis: np.ndarray, x: np.ndarray
) -> np.ndarray:
    z = (np.asarray(x, np.float64) - mean) / scale
    return np.hstack([z[:, :keep], z[:, keep:] @ basis, np.ones((len(z), 1))])


def _principal_directions(z: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """The top-k principal directions of (a row sample of) the standardised columns, by a
    randomised range finder (Halko et al.): a few matrix products instead of a full SVD."""
    if z.shape[1] == 0 or k <= 0:
        return np.zeros((z.shape[1], 0))
    rng = np.random.default_rng(seed)
    if len(z) > PCA_ROWS:
        z = z[rng.choice(len(z), PCA_ROWS, replace=False)]
    z = z - z.mean(axis=0)
    k = min(k, *z.shape)
    q = np.linalg.qr(z @ rng.standard_normal((z.shape[1], k + 10)))[0]
    for _ in range(1):  # a power iteration sharpens the leading directions
        q = np.linalg.qr(z @ (z.T @ q))[0]
    _, _, vt = np.linalg.svd(q.T @ z, full_matrices=False)
    return np.ascontiguousarray(vt[:k].T)


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * t))  # stable for any t


def fit(
    x: np.ndarray,
    y: np.ndarray,
    weight: np.ndarray | None = None,
    *,
    l2: float = 1.0,
    keep: int = 0,
    components: int = COMPONENTS,
) -> LogisticModel:
    """Fit P(y = 1 | x) by Newton's method on the weighted, L2-penalised log loss.

    The bias is not penalised. Features are standardised on the training set, so one `l2`
    suits embeddings and counts alike. Converges in a handful of steps on separable data too,
    since the penalty keeps the optimum finite."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.ndim != 2 or len(x) != len(y) or len(y) == 0:
        raise ValueError(f"need a 2-d feature matrix matching the labels, got {x.shape}, {y.shape}")
    if not set(np.unique(y)) <= {0.0, 1.0} or len(np.unique(y)) < 2:
        raise ValueError("labels must be 0/1 and hold both classes")
    w = np.ones(len(y)) if weight is None else np.asarray(weight, np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-8] = 1.0
    basis = _principal_directions(((x - mean) / scale)[:, keep:], components)
    design = _design(mean, scale, keep, basis, x)
    d = design.shape[1]
    penalty = np.full(d, float(l2))
    penalty[-1] = 1e-6  # the bias: practically free
    beta = np.zeros(d)
    hessian = np.diag(penalty)
    for _ in range(NEWTON_STEPS):
        p = _sigmoid(design @ beta)
        grad = design.T @ (w * (p - y)) + penalty * beta
        curvature = w * p * (1.0 - p)
        hessian = (design.T * curvature) @ design + np.diag(penalty)
        step = np.linalg.solve(hessian, grad)
        beta -= step
        if float(np.max(np.abs(step))) < TOLERANCE:
            break
    p = _sigmoid(design @ beta)
    hessian = (design.T * (w * p * (1.0 - p))) @ design + np.diag(penalty)
    return LogisticModel(mean, scale, keep, basis, beta, np.linalg.inv(hessian))


def predict(model: LogisticModel, x: np.ndarray) -> Predictions:
    """Posterior-averaged probabilities: σ(μ / √(1 + π s² / 8)), s² = x·Σ·x."""
    design = _design(model.mean, model.scale, model.keep, model.basis, x)
    mu = design @ model.weights
    var = np.sum((design @ model.covariance) * design, axis=1)
    std = np.sqrt(np.maximum(var, 0.0))
    return Predictions(_sigmoid(mu / np.sqrt(1.0 + math.pi * var / 8.0)), std)


def dumps(model: LogisticModel) -> bytes:
    """The model as .npz bytes (written atomically by the store)."""
    buf = io.BytesIO()
    np.savez(
        buf,
        mean=model.mean,
        scale=model.scale,
        keep=np.asarray(model.keep),
        basis=model.basis,
        weights=model.weights,
        covariance=model.covariance,
    )
    return buf.getvalue()


def loads(data: bytes) -> LogisticModel:
    with np.load(io.BytesIO(data), allow_pickle=False) as f:
        return LogisticModel(
            f["mean"], f["scale"], int(f["keep"]), f["basis"], f["weights"], f["covariance"]
        )
