"""A linear softmax classifier over the route examples' embeddings: the ``auto`` router's third
opinion, next to the nearest examples.

Nearest-example scores reward a request for resembling one example closely; a request worded unlike
any example ("my app crashes when I rotate the phone") is still on the code side of a boundary that a
linear model draws through all of them. Trained once the example matrix is set (300 full-batch
gradient steps on ~700 rows, 0.05-0.25 s, in a worker thread; deterministic: zero start, no sampling),
it costs one small matrix-vector product per decision.
"""

from __future__ import annotations

import numpy as np


def train_head(
    matrix: np.ndarray,
    bounds: tuple[tuple[int, int], ...],
    l2: float = 1e-3,
    steps: int = 300,
    lr: float = 2.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Weights ``(W, b)`` of a multinomial logistic regression from the rows of ``matrix`` (unit
    vectors) to their class, class ``i`` being the rows ``bounds[i]``; L2 penalty ``l2`` on ``W``."""
    rows = [matrix[lo:hi] for lo, hi in bounds]
    x = np.concatenate(rows).astype(np.float32)
    xt = np.ascontiguousarray(x.T)
    y = np.concatenate([np.full(len(r), i) for i, r in enumerate(rows)])
    n, k = len(x), len(bounds)
    onehot = np.eye(k, dtype=np.float32)[y]
    w, b = np.zeros((k, x.shape[1]), dtype=np.float32), np.zeros(k, dtype=np.float32)
    z = np.empty((n, k), dtype=np.float32)
    # One matrix-vector product per class, not one matrix product: OpenBLAS runs a matrix product
    # this size on every core, and on a loaded machine its threads wait at barriers (300 steps took
    # 2.5-7 s at load 12 instead of 0.1 s); its matrix-vector products stay on one thread.
    for _ in range(steps):
        for j in range(k):
            z[:, j] = x @ w[j]
        g = (softmax(z + b) - onehot) / n
        for j in range(k):
            w[j] -= lr * (xt @ g[:, j] + l2 * w[j])
        b -= lr * g.sum(axis=0)
    return np.ascontiguousarray(w.T), b


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
