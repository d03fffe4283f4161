"""Speaker clustering of d-vectors with an automatic speaker count; pure numpy + scipy.

Spectral clustering with the affinity pruned as in NME-SC (Park et al. 2019, "Auto-tuning spectral
clustering for speaker diarization using normalized maximum eigengap"): each row keeps its p strongest
neighbours, p chosen where the Laplacian's eigengap for the candidate count is clearest relative to p.
The count itself is picked by silhouette, not by the eigengap: with GE2E windows of meeting audio the
largest eigengap kept pointing at 3-6 clusters for two speakers, while the silhouette of the true split
(with overlapping windows left out of it) stayed within a few percent of the best (see `spectral_labels`).
Silhouette also answers "one speaker", which an eigengap cannot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Cosine similarity of two cluster centroids above which they are one voice (applied only when a hint
# allows fewer clusters). Measured on raw GE2E centroids: different speakers of the test clips 0.80-0.89,
# one reader split in two 0.94-0.96.
MERGE_SIMILARITY = 0.93
MAX_SPEAKERS = 8
# Measured with GE2E 1.5 s windows every 0.25 s (overlapping pairs excluded): the true split of the
# two-speaker test clips scores silhouette 0.06-0.09 and a clean 3-voice mix 0.28, while one voice split
# in two scores -0.01 (LJ Speech, 43 s) to 0.044 (JFK, 11 s); a spurious extra cluster on meeting audio
# scores up to 17 % above the true count, hence the slack.
ONE_SPEAKER_SILHOUETTE = 0.05
SILHOUETTE_SLACK = 0.2
# Eigendecomposition is O(n^3): larger inputs are clustered on an even subsample, the rest assigned.
MAX_CLUSTER_POINTS = 400


@dataclass(frozen=True)
class SpeakerCountHint:
    num: int | None = None
    min: int | None = None
    max: int | None = None

    def bounds(self, n_points: int) -> tuple[int, int]:
        """(lowest, highest) speaker count allowed, clipped to what `n_points` embeddings can show."""
        if self.num is not None:
            k = max(1, min(self.num, n_points))
            return k, k
        hi = self.max if self.max is not None else MAX_SPEAKERS
        lo = self.min if self.min is not None else 1
        hi = max(1, min(hi, n_points))
        return max(1, min(lo, hi)), hi


def normalize_rows(x: np.ndarray) -> np.ndarray:
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-9)


def cosine_affinity(emb: np.ndarray) -> np.ndarray:
    e = normalize_rows(emb.astype(np.float64))
    return np.clip(e @ e.T, -1.0, 1.0)


def _pruned(affinity: np.ndarray, p: int) -> np.ndarray:
    """Keeps each row's p largest entries (set to 1), zeroes the rest, symmetrises."""
    n = affinity.shape[0]
    keep = np.argpartition(-affinity, min(p, n - 1), axis=1)[:, :p]
    binary = np.zeros_like(affinity)
    np.put_along_axis(binary, keep, 1.0, axis=1)
    return (binary + binary.T) / 2.0


def _laplacian_eig(adj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = adj.copy()
    np.fill_diagonal(a, 0.0)
    lap = np.diag(a.sum(axis=1)) - a
    vals, vecs = np.linalg.eigh(lap)
    return vals, vecs


def _eigengap(vals: np.ndarray, k: int) -> float:
    """Gap after the k-th smallest eigenvalue (k clusters), normalised by the largest eigenvalue."""
    return float((vals[k] - vals[k - 1]) / (vals[-1] + 1e-10))


def _kmeans(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    from scipy.cluster.vq import kmeans2

    if k <= 1:
        return np.zeros(len(x), dtype=int)
    best, best_inertia = np.zeros(len(x), dtype=int), np.inf
    rng = np.random.default_rng(seed)
    for _ in range(5):  # a few restarts: k-means++ on eigenvectors is cheap and occasionally unlucky
        centroids, labels = kmeans2(x, k, minit="++", seed=rng)
        inertia = float(((x - centroids[labels]) ** 2).sum())
        if inertia < best_inertia and len(set(labels.tolist())) == k:
            best, best_inertia = labels, inertia
    return best


PrunedEigs = list[tuple[int, np.ndarray, np.ndarray]]


def pruned_eigs(emb: np.ndarray) -> PrunedEigs:
    """(p, eigenvalues, eigenvectors) of the Laplacian of the affinity of `emb` pruned to p neighbours, for
    each candidate p. They do not depend on the speaker count, so one set serves every candidate k."""
    n = len(emb)
    affinity = cosine_affinity(emb)
    max_p = max(2, n // 4)
    candidates = sorted({int(v) for v in np.linspace(2, max_p, num=min(max_p - 1, 8))})
    return [(p, *_laplacian_eig(_pruned(affinity, p))) for p in candidates]


def spectral_vectors(emb: np.ndarray, k: int, eigs: PrunedEigs | None = None) -> np.ndarray:
    """Laplacian eigenvectors (columns, ascending eigenvalue) of the affinity of `emb` pruned with the p
    that makes the gap after the k-th eigenvalue clearest (NME-SC with the count fixed).

    `eigs`: `pruned_eigs(emb)`, when several k are tried on the same embeddings."""
    n = len(emb)
    best: tuple[float, np.ndarray] | None = None
    for p, vals, vecs in pruned_eigs(emb) if eigs is None else eigs:
        score = (p / n) / (_eigengap(vals, k) + 1e-10)  # NME-SC's ratio: small p with a clear gap wins
        if best is None or score < best[0]:
            best = (score, vecs)
    assert best is not None
    return best[1]


def silhouette(emb: np.ndarray, labels: np.ndarray, exclude: int = 0) -> float:
    """Mean silhouette with cosine similarity (own-cluster mean minus nearest other cluster mean).

    Pairs less than `exclude` rows apart are left out: overlapping windows share most of their audio,
    so counting them rewards chopping the recording into short runs of consecutive windows."""
    k = int(labels.max()) + 1
    if k < 2:
        return 0.0
    e = normalize_rows(emb)
    sim = e @ e.T
    idx = np.arange(len(e))
    keep = (np.abs(idx[:, None] - idx[None, :]) >= max(1, exclude)).astype(np.float64)
    onehot = np.eye(k)[labels]
    sizes = keep @ onehot
    means = ((sim * keep) @ onehot) / np.maximum(sizes, 1)
    own = means[np.arange(len(e)), labels]
    means[np.arange(len(e)), labels] = -np.inf
    return float(np.mean(own - means.max(axis=1)))


def spectral_labels(
    emb: np.ndarray, hint: SpeakerCountHint = SpeakerCountHint(), overlap: int = 1
) -> np.ndarray:
    """Cluster labels (0..k-1, by first appearance) for each row of `emb`, k chosen within the hint's bounds.

    Every window of one recording shares channel and room, which GE2E's all-positive d-vectors carry
    as a large common component (different speakers' centroids still score 0.8-0.9); subtracting the
    recording mean removes it before the affinity graph is built. The count is the smallest k whose
    silhouette is within SILHOUETTE_SLACK of the best: on meeting audio GE2E windows keep splitting
    one voice into prosody/noise sub-clusters that score almost as well as the true split.
    """
    n = len(emb)
    if n == 0:
        return np.zeros(0, dtype=int)
    lo, hi = hint.bounds(n)
    if hi == 1 or n < 2:
        return np.zeros(n, dtype=int)
    if n < 4:
        labels = _kmeans(normalize_rows(emb), min(hi, n))
        return relabel_by_first_appearance(merge_similar(emb, labels, min_clusters=lo))
    if lo >= n:  # as many speakers as embeddings: nothing left to cluster
        return np.arange(n)
    centred = normalize_rows(emb - emb.mean(axis=0))
    # "One voice" is judged on up to 4 clusters even when a max hint is lower: three voices forced into
    # two clusters score poorly, which must not read as one voice. The eigengap after the k-th eigenvalue
    # needs k < n, so a handful of windows (a few seconds of speech) caps the count at n - 1.
    top = min(max(hi, min(4, n - 1)) if lo <= 1 else hi, n - 1)
    eigs = pruned_eigs(centred)
    options = {k: _kmeans(spectral_vectors(centred, k, eigs)[:, :k], k) for k in range(max(lo, 2), top + 1)}
    scores = {k: silhouette(emb, labels, exclude=overlap) for k, labels in options.items()}
    if lo <= 1 and max(scores.values()) < ONE_SPEAKER_SILHOUETTE:
        return np.zeros(n, dtype=int)
    scores = {k: v for k, v in scores.items() if k <= hi}
    best = max(scores.values())
    k = min(k for k, s in scores.items() if s >= best - SILHOUETTE_SLACK * abs(best))
    labels = options[k]
    if lo < k:
        labels = merge_similar(emb, labels, min_clusters=lo)
    return relabel_by_first_appearance(labels)


def centroids(emb: np.ndarray, labels: np.ndarray, k: int | None = None) -> np.ndarray:
    k = int(labels.max()) + 1 if k is None else k
    e = normalize_rows(emb)
    return normalize_rows(
        np.stack([e[labels == i].mean(axis=0) if np.any(labels == i) else e.mean(axis=0) for i in range(k)])
    )


def merge_similar(
    emb: np.ndarray, labels: np.ndarray, min_clusters: int = 1, threshold: float = MERGE_SIMILARITY
) -> np.ndarray:
    """Merges the most similar pair of clusters while their centroids exceed `threshold`."""
    labels = relabel_by_first_appearance(labels)
    while True:
        k = int(labels.max()) + 1 if len(labels) else 0
        if k <= max(1, min_clusters):
            return labels
        c = centroids(emb, labels, k)
        sim = c @ c.T
        np.fill_diagonal(sim, -np.inf)
        i, j = np.unravel_index(int(np.argmax(sim)), sim.shape)
        if sim[i, j] < threshold:
            return labels
        labels = relabel_by_first_appearance(np.where(labels == max(i, j), min(i, j), labels))


def relabel_by_first_appearance(labels: np.ndarray) -> np.ndarray:
    order: dict[int, int] = {}
    for lab in labels.tolist():
        order.setdefault(lab, len(order))
    return np.array([order[lab] for lab in labels.tolist()], dtype=int)


def cluster(emb: np.ndarray, hint: SpeakerCountHint = SpeakerCountHint(), overlap: int = 1) -> np.ndarray:
    """Labels for every embedding; big inputs are clustered on an even subsample and the rest assigned.

    `overlap`: how many consecutive rows share audio (window / step), see `silhouette`."""
    n = len(emb)
    if n <= MAX_CLUSTER_POINTS:
        return spectral_labels(emb, hint, overlap)
    idx = np.linspace(0, n - 1, MAX_CLUSTER_POINTS).astype(int)
    sub = spectral_labels(emb[idx], hint, max(1, round(overlap * MAX_CLUSTER_POINTS / n)))
    cents = centroids(emb[idx], sub)
    return relabel_by_first_appearance(np.argmax(normalize_rows(emb) @ cents.T, axis=1))
