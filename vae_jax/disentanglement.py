"""Disentanglement and class-overlap metrics on (codes, factors) pairs: numpy in, numbers out.

``codes`` are representations [N, d] (posterior means); ``factors`` the ground-truth factor
classes [N, K] (integers). The definitions and defaults follow disentanglement_lib (Locatello
et al. 2019), whose published settings are the defaults of ``config.EvalConfig``:

- MIG (Chen et al. 2018): codes discretized into 20 equal-width histogram bins per dimension,
  mutual information I(c_j; v_k) by ``sklearn.metrics.mutual_info_score``, the gap between the
  two most informative dimensions of each factor divided by the factor's entropy H(v_k),
  averaged over factors; 10,000 points.
- DCI (Eastwood & Williams 2018): an importance matrix R [d, K] from one classifier per factor
  (``GradientBoostingClassifier()`` with sklearn's defaults as disentanglement_lib, or a
  cheaper random forest of 30 bagged trees, ``max_features=None``, ``min_samples_leaf=5``),
  10,000 training and 5,000 test points.
  Disentanglement Σ_j ρ_j (1 − H_K(R_j·)) with ρ_j the share of total importance on code j;
  completeness Σ_k ρ_k (1 − H_d(R_·k)); informativeness the mean test accuracy over factors.
- SAP (Kumar et al. 2018): for each (code j, factor k) the test accuracy of a
  ``LinearSVC(C=0.01, class_weight='balanced')`` predicting v_k from c_j alone; the mean over
  factors of the gap between the two best codes. 10,000 training and 5,000 test points.
- FactorVAE score (Kim & Mnih 2018): dimensions whose standard deviation over 10,000 points is
  below 0.05 are pruned; each vote fixes one factor at one value, takes 64 points, divides the
  codes by their global standard deviations and votes (factor, dimension of least variance); a
  majority-vote classifier dimension -> factor is fit on 10,000 votes and scored on 5,000.
- β-VAE score (Higgins et al. 2017): each example is the mean |c(x₁) − c(x₂)| over 64 pairs
  that share the value of one factor; ``LogisticRegression`` predicts the factor; 10,000
  training and 5,000 evaluation examples.

The FactorVAE and β-VAE scores need points that share a factor's value. disentanglement_lib
renders new images for sampled factors; here they are drawn (with replacement) from the given
pool of (code, factor) pairs: a value is taken from a random pool point, and its companions
among the pool points with that value. For a pool drawn uniformly from a full factor grid (the
test split of ``dsprites_generated``) the other factors are then uniform as well, as in the
original protocol; points repeat across votes when the pool is small.
"""

from __future__ import annotations

import numpy as np
import scipy.stats
from sklearn import ensemble, linear_model, metrics, neighbors, preprocessing, svm


def _check(codes: np.ndarray, factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    codes, factors = np.asarray(codes, np.float64), np.asarray(factors)
    if codes.ndim != 2 or factors.ndim != 2 or len(codes) != len(factors) or len(codes) < 2:
        raise ValueError(f"codes [N, d] and factors [N, K] with N >= 2, got {codes.shape} and "
                         f"{factors.shape}")
    return codes, factors.astype(np.int64)


def histogram_discretize(codes: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """Each code dimension cut into ``num_bins`` equal-width bins over its range -> bin ids."""
    out = np.zeros(codes.shape, np.int64)
    for j in range(codes.shape[1]):
        edges = np.histogram(codes[:, j], num_bins)[1]
        out[:, j] = np.digitize(codes[:, j], edges[:-1])
    return out


def mutual_information(discrete_codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """I(c_j; v_k) in nats for discrete codes [N, d] and factors [N, K] -> [d, K]."""
    return np.array([[metrics.mutual_info_score(factors[:, k], discrete_codes[:, j])
                      for k in range(factors.shape[1])] for j in range(discrete_codes.shape[1])])


def mig(codes: np.ndarray, factors: np.ndarray, num_bins: int = 20) -> dict[str, object]:
    """Mutual information gap: {'mig', 'mig_per_factor' [K]} (needs d >= 2)."""
    codes, factors = _check(codes, factors)
    if codes.shape[1] < 2:
        raise ValueError("MIG needs at least two code dimensions")
    mi = mutual_information(histogram_discretize(codes, num_bins), factors)
    entropy = np.array([metrics.mutual_info_score(f, f) for f in factors.T])
    top = np.sort(mi, axis=0)[::-1]
    per = (top[0] - top[1]) / np.maximum(entropy, 1e-12)
    return {"mig": float(per.mean()), "mig_per_factor": per.tolist()}


def _classifier(model: str, seed: int):
    if model == "gbt":
        return ensemble.GradientBoostingClassifier(random_state=seed)
    if model == "forest":
        # bagged trees (every split may use every code): impurity importances stay on the
        # informative codes, where the default sqrt-feature forest spreads them to the rest
        return ensemble.RandomForestClassifier(n_estimators=30, max_features=None,
                                               min_samples_leaf=5, random_state=seed, n_jobs=1)
    raise ValueError(f"unknown DCI model {model!r}; choose 'gbt' or 'forest'")


def importance_matrix(codes_train, factors_train, codes_test, factors_test, model: str = "gbt",
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """R [d, K] (|feature importances| of one classifier per factor), and its train and test
    accuracies [K]."""
    d, k = codes_train.shape[1], factors_train.shape[1]
    r = np.zeros((d, k))
    train_acc, test_acc = np.zeros(k), np.zeros(k)
    for i in range(k):
        clf = _classifier(model, seed).fit(codes_train, factors_train[:, i])
        r[:, i] = np.abs(clf.feature_importances_)
        train_acc[i] = np.mean(clf.predict(codes_train) == factors_train[:, i])
        test_acc[i] = np.mean(clf.predict(codes_test) == factors_test[:, i])
    return r, train_acc, test_acc


def dci_scores(r: np.ndarray) -> tuple[float, float]:
    """(disentanglement, completeness) of an importance matrix R [d, K]."""
    r = np.asarray(r, np.float64)
    weights = r if r.sum() > 0 else np.ones_like(r)
    dis = 1.0 - scipy.stats.entropy(r.T + 1e-11, base=r.shape[1])  # per code
    com = 1.0 - scipy.stats.entropy(r + 1e-11, base=r.shape[0])  # per factor
    rho_code = weights.sum(1) / weights.sum()
    rho_factor = weights.sum(0) / weights.sum()
    return float(np.sum(dis * rho_code)), float(np.sum(com * rho_factor))


def dci(codes_train, factors_train, codes_test, factors_test, model: str = "gbt",
        seed: int = 0) -> dict[str, float]:
    """{'dci_disentanglement', 'dci_completeness', 'dci_informativeness' (mean test accuracy),
    'dci_informativeness_train'}."""
    codes_train, factors_train = _check(codes_train, factors_train)
    codes_test, factors_test = _check(codes_test, factors_test)
    r, train_acc, test_acc = importance_matrix(codes_train, factors_train, codes_test,
                                               factors_test, model, seed)
    dis, com = dci_scores(r)
    return {"dci_disentanglement": dis, "dci_completeness": com,
            "dci_informativeness": float(test_acc.mean()),
            "dci_informativeness_train": float(train_acc.mean())}


def sap(codes_train, factors_train, codes_test, factors_test) -> dict[str, float]:
    """Separated attribute predictability for discrete factors: {'sap'}."""
    codes_train, factors_train = _check(codes_train, factors_train)
    codes_test, factors_test = _check(codes_test, factors_test)
    d, k = codes_train.shape[1], factors_train.shape[1]
    score = np.zeros((d, k))
    for j in range(d):
        for i in range(k):
            clf = svm.LinearSVC(C=0.01, class_weight="balanced")
            clf.fit(codes_train[:, j:j + 1], factors_train[:, i])
            score[j, i] = np.mean(clf.predict(codes_test[:, j:j + 1]) == factors_test[:, i])
    top = np.sort(score, axis=0)
    return {"sap": float(np.mean(top[-1] - top[-2]))}


class _Groups:
    """Pool indices grouped by the value of each factor, for drawing points that share one."""

    def __init__(self, factors: np.ndarray):
        self.factors = factors
        self.order, self.start, self.count = [], [], []
        for f in factors.T:
            o = np.argsort(f, kind="stable")
            vals, first, cnt = np.unique(f[o], return_index=True, return_counts=True)
            start = np.zeros(f.max() + 1, np.int64)
            count = np.zeros(f.max() + 1, np.int64)
            start[vals], count[vals] = first, cnt
            self.order.append(o)
            self.start.append(start)
            self.count.append(count)

    def like(self, rng: np.random.Generator, k: int, anchors: np.ndarray) -> np.ndarray:
        """For each anchor index, a random pool index with the anchor's value of factor k."""
        v = self.factors[anchors, k]
        pick = self.start[k][v] + (rng.random(len(anchors)) * self.count[k][v]).astype(np.int64)
        return self.order[k][pick]


def factor_vae_score(codes: np.ndarray, factors: np.ndarray, seed: int = 0, batch_size: int = 64,
                     num_train: int = 10000, num_eval: int = 5000,
                     num_variance_estimate: int = 10000, threshold: float = 0.05) -> dict[str, float]:
    """{'factor_vae_score' (evaluation accuracy), 'factor_vae_train', 'factor_vae_active_dims'}."""
    codes, factors = _check(codes, factors)
    rng = np.random.default_rng(seed)
    n, k = len(codes), factors.shape[1]
    sub = rng.choice(n, min(num_variance_estimate, n), replace=False)
    global_var = np.var(codes[sub], axis=0, ddof=1)
    active = np.flatnonzero(np.sqrt(global_var) >= threshold)
    if not len(active):
        return {"factor_vae_score": 0.0, "factor_vae_train": 0.0, "factor_vae_active_dims": 0}
    groups = _Groups(factors)

    def votes(num):
        out = np.zeros((len(active), k), np.int64)
        for _ in range(num):
            f = rng.integers(k)
            idx = groups.like(rng, f, np.full(batch_size, rng.integers(n)))
            local = np.var(codes[idx][:, active], axis=0, ddof=1)
            out[np.argmin(local / global_var[active]), f] += 1
        return out

    train = votes(num_train)
    classifier = np.argmax(train, axis=1)  # dimension -> factor
    rows = np.arange(len(active))
    evals = votes(num_eval)
    return {"factor_vae_score": float(evals[rows, classifier].sum() / evals.sum()),
            "factor_vae_train": float(train[rows, classifier].sum() / train.sum()),
            "factor_vae_active_dims": int(len(active))}


def beta_vae_score(codes: np.ndarray, factors: np.ndarray, seed: int = 0, batch_size: int = 64,
                   num_train: int = 10000, num_eval: int = 5000) -> dict[str, float]:
    """{'beta_vae_score' (evaluation accuracy), 'beta_vae_train'}."""
    codes, factors = _check(codes, factors)
    rng = np.random.default_rng(seed)
    n, k = len(codes), factors.shape[1]
    groups = _Groups(factors)

    def examples(num):
        x, y = np.zeros((num, codes.shape[1])), rng.integers(k, size=num)
        for i in range(num):
            a = rng.integers(n, size=batch_size)
            b = groups.like(rng, y[i], a)
            x[i] = np.mean(np.abs(codes[a] - codes[b]), axis=0)
        return x, y

    x_train, y_train = examples(num_train)
    x_eval, y_eval = examples(num_eval)
    clf = linear_model.LogisticRegression(max_iter=1000, random_state=seed).fit(x_train, y_train)
    return {"beta_vae_score": float(np.mean(clf.predict(x_eval) == y_eval)),
            "beta_vae_train": float(np.mean(clf.predict(x_train) == y_train))}


def class_overlap(codes: np.ndarray, labels: np.ndarray, seed: int = 0, neighbors_k: int = 5,
                  silhouette_points: int = 5000) -> dict[str, float]:
    """How separable the classes are in code space, on a seeded half/half split of the points:
    the test accuracy of a linear probe (``LogisticRegression`` on standardized codes) and of a
    k-NN classifier, and the silhouette score (Rousseeuw 1987; in [−1, 1], higher = classes
    further apart relative to their spread) on up to ``silhouette_points`` points. Lower
    accuracies and silhouette mean more overlap."""
    codes, labels = np.asarray(codes, np.float64), np.asarray(labels)
    n = len(codes)
    if n < 4 or len(np.unique(labels)) < 2:
        raise ValueError(f"class overlap needs at least 4 points of 2 classes, got {n} points of "
                         f"{len(np.unique(labels))} class(es)")
    perm = np.random.default_rng(seed).permutation(n)
    tr, te = perm[: n // 2], perm[n // 2:]
    scaler = preprocessing.StandardScaler().fit(codes[tr])
    probe = linear_model.LogisticRegression(max_iter=1000).fit(scaler.transform(codes[tr]), labels[tr])
    knn = neighbors.KNeighborsClassifier(min(neighbors_k, len(tr))).fit(codes[tr], labels[tr])
    m = min(silhouette_points, n)
    return {"probe_accuracy": float(probe.score(scaler.transform(codes[te]), labels[te])),
            "knn_accuracy": float(knn.score(codes[te], labels[te])),
            "silhouette": float(metrics.silhouette_score(codes[perm[:m]], labels[perm[:m]]))}
