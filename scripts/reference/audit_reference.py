#!/usr/bin/env python3
"""Reference implementation of the membership-inference audit's scores, metrics and epsilon
bounds (docs/audit.md), written from the papers, not from any paper's code, and the generator
of the audit's committed reference files:

  tests/fixtures/audit_test_vectors.json    --vectors OUT.json
        scores from synthetic logits, AUC with ties, TPR@FPR in three conventions, Clopper-Pearson
        epsilon (Jagielski, Ullman, Oprea 2020; Nasr et al. 2021), one-run epsilon (Steinke,
        Nasr, Jagielski 2023), a seeded stratified bootstrap. Needs scipy; scikit-learn and
        statsmodels cross-check it (the file records "ok" for both). Under 30 s.
        python3 -m venv /tmp/auditvenv
        /tmp/auditvenv/bin/pip install -r scripts/reference/requirements-audit.txt
        /tmp/auditvenv/bin/python scripts/reference/audit_reference.py --vectors tests/fixtures/audit_test_vectors.json
  tests/fixtures/audit/ (except reference_scores.jsonl)    --fixture DIR
        a tiny GPT-2 (2 layers, width 32, byte-level BPE of vocab 400 trained on the 16 texts),
        random init from torch.manual_seed(0) saved as base/, then one epoch of SGD (lr 0.01)
        on the 8 member texts saved at the top; texts.jsonl holds the 16 texts with their
        labels (1 = member). Under 30 s. CI venv (requirements-ci.txt):
        .venv/bin/python scripts/reference/audit_reference.py --fixture tests/fixtures/audit
  tests/fixtures/audit/reference_scores.jsonl    --scores DIR OUT.jsonl
        per text of DIR/texts.jsonl: ids, token log-probs, loss, the score of every attack (loss;
        zlib, Carlini et al. 2021; lowercase; reference model = DIR/base; Min-K% Prob, Shi et al.
        2023; Min-K%++, Zhang et al. 2024), computed the way the attacks' reference code does
        (tokenizer.encode -> model(ids, labels=ids) -> float64 log_softmax). Under 30 s. CI venv:
        .venv/bin/python scripts/reference/audit_reference.py --scores tests/fixtures/audit tests/fixtures/audit/reference_scores.jsonl
        The test reference_generators (tests/reference_generators.rs) runs --fixture and --scores
        into a temporary directory and compares with the committed files.

Versions: Python 3.11.7; numpy 2.4.6 and, for --vectors, scipy 1.17.1, scikit-learn 1.9.1,
statsmodels 0.15.0 (scripts/reference/requirements-audit.txt); for --fixture and --scores
torch 2.11.0, transformers 5.24.0, tokenizers 0.23.3 (requirements-ci.txt). Deterministic on one
machine; across machines the float32 training and forward passes move the last bits: rerun
elsewhere, --vectors and every fixture file but model.safetensors came out byte for byte, the
fine-tuned weights within 4e-9 and the scores within 1e-6 of the committed ones.
"""
import json
import math
import sys
import zlib
from fractions import Fraction

import numpy as np

# scipy is imported where it is used (the epsilon bounds and the vectors), so that the fixture
# and its scores need only the CI venv, which has no scipy.

# ---------------------------------------------------------------------------
# 1. Per-text scores.  Canonical sign: HIGHER score => MORE LIKELY MEMBER.
# ---------------------------------------------------------------------------


def logsumexp_rows(x):
    """scipy.special.logsumexp(x, axis=-1, keepdims=True) of scipy 1.17.1 for finite real rows, in
    numpy and in its order of operations (bit for bit the same): the maxima are taken out of the
    sum, log1p(sum(exp(x - max)) / m) + log(m) + max with m the number of maxima."""
    a_max = np.max(x, axis=-1, keepdims=True)
    mask = x == a_max
    m = np.sum(mask.astype(x.dtype), axis=-1, keepdims=True, dtype=x.dtype)
    s = np.sum(np.exp(np.where(mask, -np.inf, x) - a_max), axis=-1, keepdims=True, dtype=x.dtype)
    s = np.where(s == 0, s, s / m)
    return np.log1p(s) + np.log(m) + a_max


def log_softmax_rows(logits):
    """Natural-log softmax of each row (float64)."""
    x = np.asarray(logits, dtype=np.float64)
    return x - logsumexp_rows(x)


def token_logprobs(logits, ids):
    """lp[t-1] = log p(ids[t] | ids[:t]) for t = 1..n-1 (the first token is never scored).

    logits: (n, V) raw logits of one forward pass over ids (n tokens).
    Returns (lp (n-1,), lsm (n-1, V)) where lsm are the log-softmax rows 0..n-2.
    """
    ids = np.asarray(ids)
    lsm = log_softmax_rows(logits)[:-1]
    lp = lsm[np.arange(len(ids) - 1), ids[1:]]
    return lp, lsm


def loss(lp):
    """HF causal-LM loss = mean NLL over the n-1 predicted tokens (nats)."""
    return float(-np.mean(lp)) if len(lp) else float("nan")


def k_count(n, ratio):
    """Python's int(n*ratio) in IEEE double: floor((f64)n * ratio).  NOT exact
    rational floor: for ratio=0.7, n=90 this gives 62 (exact would be 63)."""
    return int(n * ratio)


def min_k(lp, ratio):
    """Min-K% Prob (Shi et al.): mean of the k = int(n*ratio) lowest token log-probs.
    k == 0 -> NaN (reference np.mean([]) behaviour)."""
    k = k_count(len(lp), ratio)
    if k == 0:
        return float("nan")
    return float(np.mean(np.sort(np.asarray(lp, dtype=np.float64))[:k]))


def min_k_pp_tokens(lp, lsm):
    """Min-K%++ per-token z-scores: (log p(x_t) - mu_t) / sigma_t with
    mu_t = sum_v p_v log p_v, sigma_t^2 = sum_v p_v (log p_v)^2 - mu_t^2 over the FULL
    logit row (all V entries, including padded vocabulary)."""
    p = np.exp(lsm)
    mu = (p * lsm).sum(-1)
    var = (p * lsm * lsm).sum(-1) - mu * mu
    return (np.asarray(lp) - mu) / np.sqrt(var)


def min_k_pp(lp, lsm, ratio):
    z = min_k_pp_tokens(lp, lsm)
    k = k_count(len(z), ratio)
    if k == 0:
        return float("nan")
    return float(np.mean(np.sort(z)[:k]))


def zlib_len(text):
    """len(zlib.compress(utf8 bytes)) at Python's default level (-1 == 6)."""
    return len(zlib.compress(text.encode("utf-8")))


def score_zlib(loss_x, text):
    return -loss_x / zlib_len(text)


def score_lowercase(loss_lower, loss_x):
    return loss_lower / loss_x


def score_ref(loss_target, loss_ref):
    return loss_ref - loss_target


# ---------------------------------------------------------------------------
# 2. Metrics (members = positives, label 1; higher score => predicted member)
# ---------------------------------------------------------------------------


def _clean(scores, labels):
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    keep = ~np.isnan(s)
    return s[keep], y[keep], int((~keep).sum())


def auc_exact(scores, labels):
    """AUC = (#(m>n) + 0.5 #(m==n)) / (P N).  Returns (Fraction, float, dropped_nan).
    Equals sklearn roc_auc_score / auc(roc_curve(...)) up to float rounding."""
    s, y, dropped = _clean(scores, labels)
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    # 2 * average rank (1-based) for each tie group = first + last (integers)
    two_rank = np.empty(len(s), dtype=np.int64)
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s_sorted[j + 1] == s_sorted[i]:
            j += 1
        two_rank[order[i:j + 1]] = (i + 1) + (j + 1)
        i = j + 1
    P = int((y == 1).sum())
    N = int((y == 0).sum())
    two_u = int(two_rank[y == 1].sum()) - P * (P + 1)  # 2*U
    fr = Fraction(two_u, 2 * P * N)
    return fr, float(fr), dropped


def roc_points(scores, labels):
    """Full ROC (no intermediate-point dropping): list of (fp, tp) counts for
    thresholds at each distinct score, descending, starting at (0, 0)."""
    s, y, _ = _clean(scores, labels)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    pts = [(0, 0)]
    tp = fp = 0
    for i in range(len(s)):
        tp += int(y[i] == 1)
        fp += int(y[i] == 0)
        if i == len(s) - 1 or s[i + 1] != s[i]:
            pts.append((fp, tp))
    return pts, int((y == 1).sum()), int((y == 0).sum())


def tpr_at_fpr(scores, labels, target, mode="strict"):
    """strict : max TPR over thresholds with FPR <  target  (LiRA / detect-pretrain-code / MIMIR)
       leq    : max TPR over thresholds with FPR <= target  (mink-plus-plus repo)
       interp : max TPR of a randomised threshold with FPR == target (jax_privacy):
                linear interpolation along the ROC's upper concave hull.
    Returns (tpr, realised_fpr)."""
    pts, P, N = roc_points(scores, labels)
    if mode in ("strict", "leq"):
        best = (0.0, 0.0)
        for fp, tp in pts:
            f = fp / N
            ok = f < target if mode == "strict" else f <= target
            if ok and (tp / P, -f) > (best[0], -best[1]):
                best = (tp / P, f)
        return best
    if mode == "interp":
        # upper concave hull of ROC points (fpr, tpr)
        hull = []
        for fp, tp in pts:
            x, yv = fp / N, tp / P
            while len(hull) >= 2:
                (x1, y1), (x2, y2) = hull[-2], hull[-1]
                if (y2 - y1) * (x - x1) <= (yv - y1) * (x2 - x1):
                    hull.pop()
                else:
                    break
            hull.append((x, yv))
        for (x1, y1), (x2, y2) in zip(hull, hull[1:]):
            if x1 <= target <= x2:
                if x2 == x1:
                    return max(y1, y2), target
                return y1 + (target - x1) * (y2 - y1) / (x2 - x1), target
        return hull[-1][1], hull[-1][0]
    raise ValueError(mode)


def quantile_linear(sorted_vals, q):
    """numpy default ('linear', Hyndman-Fan type 7)."""
    h = (len(sorted_vals) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (h - lo) * (sorted_vals[hi] - sorted_vals[lo])


def bootstrap_ci(stat, scores, labels, B=1000, seed=0, qs=(0.025, 0.975), index_sink=None):
    """Stratified percentile bootstrap: resample members and non-members separately
    (with replacement, same sizes).  stat(scores, labels) -> float.
    index_sink: optional list that receives the resample index arrays so another
    implementation can replay exactly the same resamples."""
    s, y, _ = _clean(scores, labels)
    mi = np.flatnonzero(y == 1)
    ni = np.flatnonzero(y == 0)
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(B):
        idx = np.concatenate([rng.choice(mi, size=len(mi)), rng.choice(ni, size=len(ni))])
        if index_sink is not None:
            index_sink.append(idx.tolist())
        vals.append(stat(s[idx], y[idx]))
    vals = sorted(vals)
    return [quantile_linear(vals, q) for q in qs], float(np.mean(vals)), float(np.std(vals, ddof=1))


# ---------------------------------------------------------------------------
# 3. Empirical epsilon lower bounds
# ---------------------------------------------------------------------------


def cp_upper(k, n, alpha):
    """One-sided Clopper-Pearson upper bound: P[Bin(n,p_ub) <= k] = alpha."""
    from scipy import stats
    if k >= n:
        return 1.0
    return float(stats.beta.ppf(1.0 - alpha, k + 1, n - k))


def cp_lower(k, n, alpha):
    from scipy import stats
    if k <= 0:
        return 0.0
    return float(stats.beta.ppf(alpha, k, n - k + 1))


def eps_classic(tp, fp, fn, tn, delta=0.0, alpha=0.05, two_sided=True):
    """(eps, delta)-DP => FPR + e^eps FNR >= 1-delta and FNR + e^eps FPR >= 1-delta.
    With one-sided CP upper bounds at alpha/2 each (union bound => confidence 1-alpha):
      eps_fwd = ln(1 - delta - FNR_ub) - ln(FPR_ub)   (= ln((TPR_lb - delta)/FPR_ub), Jagielski 2020)
      eps_rev = ln(1 - delta - FPR_ub) - ln(FNR_ub)   (Nasr 2021 adds this direction)
    Returns max(0, eps_fwd[, eps_rev])."""
    P, N = tp + fn, fp + tn
    fpr_ub = cp_upper(fp, N, alpha / 2)
    fnr_ub = cp_upper(fn, P, alpha / 2)
    cands = [0.0]
    if 1 - delta - fnr_ub > 0:
        cands.append(math.log(1 - delta - fnr_ub) - math.log(fpr_ub))
    if two_sided and 1 - delta - fpr_ub > 0:
        cands.append(math.log(1 - delta - fpr_ub) - math.log(fnr_ub))
    return max(cands)


def eps_classic_best(scores, labels, delta=0.0, alpha=0.05, two_sided=True, bonferroni=True):
    """Best threshold over all ROC points; alpha divided by the number of thresholds
    tried when bonferroni=True (jax_privacy default).  Returns (eps, fp, tp)."""
    pts, P, N = roc_points(scores, labels)
    a = alpha / len(pts) if bonferroni else alpha
    best = (0.0, 0, 0)
    for fp, tp in pts:
        e = eps_classic(tp, fp, P - tp, N - fp, delta, a, two_sided)
        if e > best[0]:
            best = (e, fp, tp)
    return best


def binom_sf_ge(v, r, q):
    """P[Binomial(r, q) >= v]."""
    from scipy import stats
    if v <= 0:
        return 1.0
    if v > r:
        return 0.0
    return float(stats.binom.sf(v - 1, r, q))


def one_run_pvalue(m, r, v, eps, delta):
    """Steinke-Nasr-Jagielski 2023: if the canary mechanism is (eps, delta)-DP then
    P[#correct >= v] <= f(v) + 2 m delta max_{1<=i<=v} (f(v-i) - f(v)) / i,
    f(u) = P[Bin(r, e^eps/(1+e^eps)) >= u]."""
    from scipy import special, stats
    assert 0 <= v <= r <= m and eps >= 0 and 0 <= delta <= 1
    q = float(special.expit(eps))
    fv = binom_sf_ge(v, r, q)
    if delta == 0 or v == 0:
        return min(fv, 1.0)
    i = np.arange(1, v + 1)
    # f(v-i) - f(v) = P[v-i <= Bin < v]; sf(v-i-1) = P[Bin >= v-i]
    alpha = max(0.0, float(np.max((stats.binom.sf(v - i - 1, r, q) - fv) / i)))
    return min(fv + alpha * delta * 2 * m, 1.0)


def one_run_eps(m, r, v, delta, beta=0.05, tol=1e-10):
    """Largest eps with p-value < beta (0 if even eps=0 is not rejected).
    p is non-decreasing in eps, so bisection is exact up to tol."""
    if one_run_pvalue(m, r, v, 0.0, delta) >= beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while one_run_pvalue(m, r, v, hi, delta) < beta:
        lo, hi = hi, hi * 2
        if hi > 1e4:
            return float("inf")
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if one_run_pvalue(m, r, v, mid, delta) < beta:
            lo = mid
        else:
            hi = mid
    return lo


def one_run_audit(scores, included, delta, beta=0.05, k_plus=(), k_minus=(0,), correction="bonferroni"):
    """scores: canary scores (higher => member); included: S_i in {+1,-1}.
    Ranks canaries by (score desc, index asc); for each (k+, k-) pair guesses +1 for
    the top k+, -1 for the bottom k-.  Returns best dict over the grid; beta is divided
    by the grid size when correction == 'bonferroni'."""
    s = np.asarray(scores, dtype=np.float64)
    S = np.asarray(included)
    m = len(s)
    order = sorted(range(m), key=lambda i: (-s[i], i))
    grid = [(kp, km) for kp in k_plus for km in k_minus if kp + km <= m]
    b = beta / len(grid) if correction == "bonferroni" else beta
    best = {"eps": 0.0}
    for kp, km in grid:
        top = order[:kp]
        bot = order[m - km:] if km else []
        v = int(sum(S[i] == 1 for i in top) + sum(S[i] == -1 for i in bot))
        r = kp + km
        e = one_run_eps(m, r, v, delta, b)
        if "k_plus" not in best or e > best["eps"]:
            best = {"eps": e, "k_plus": kp, "k_minus": km, "r": r, "v": v, "m": m, "beta_used": b}
    return best


# ---------------------------------------------------------------------------
# 4. Self-test and test vectors
# ---------------------------------------------------------------------------


def selftest():
    """The test vectors (tests/fixtures/audit_test_vectors.json); asserts as it goes."""
    from scipy import stats
    out = {}
    rng = np.random.default_rng(12345)

    # --- scores from synthetic logits -------------------------------------
    V, n = 11, 9
    logits = rng.normal(0, 3, size=(n, V)).astype(np.float32)
    ids = rng.integers(0, V, size=n)
    lp, lsm = token_logprobs(logits, ids)
    out["scores_fixture"] = {
        "V": V, "logits": logits.astype(float).tolist(), "ids": ids.tolist(),
        "token_logprobs": lp.tolist(), "loss": loss(lp),
        **{f"min_k_{r}": min_k(lp, r) for r in (0.05, 0.1, 0.2, 0.5, 1.0)},
        **{f"min_k_pp_{r}": min_k_pp(lp, lsm, r) for r in (0.05, 0.1, 0.2, 0.5, 1.0)},
        "min_k_pp_tokens": min_k_pp_tokens(lp, lsm).tolist(),
    }
    assert math.isnan(out["scores_fixture"]["min_k_0.05"])  # 8 tokens * 0.05 -> k = 0
    assert k_count(90, 0.7) == 62 and k_count(10, 0.2) == 2
    txt = "The quick brown fox jumps over the lazy dog. " * 3
    out["zlib"] = {"text": txt, "zlib_len": zlib_len(txt), "zlib_runtime": zlib.ZLIB_RUNTIME_VERSION,
                   "empty_len": zlib_len(""), "unicode_len": zlib_len("Zürich — 東京 😀")}

    # --- AUC with ties -----------------------------------------------------
    sc = [0.9, 0.8, 0.8, 0.7, 0.7, 0.7, 0.3, 0.2, float("nan")]
    lb = [1, 1, 0, 1, 0, 0, 1, 0, 1]
    fr, f, dropped = auc_exact(sc, lb)
    out["auc_ties"] = {"scores": [None if math.isnan(x) else x for x in sc], "labels": lb,
                       "auc_fraction": [fr.numerator, fr.denominator], "auc": f, "dropped_nan": dropped}
    try:
        from sklearn.metrics import roc_auc_score, roc_curve, auc
        s2, y2, _ = _clean(sc, lb)
        assert abs(roc_auc_score(y2, s2) - f) < 1e-15
        big_s = rng.integers(0, 50, size=2000).astype(float)  # heavy ties
        big_y = rng.integers(0, 2, size=2000)
        fr2, f2, _ = auc_exact(big_s, big_y)
        fpr, tpr, _ = roc_curve(big_y, big_s)
        assert abs(auc(fpr, tpr) - f2) < 1e-12
        # TPR@FPR strict == LiRA/detect-pretrain/MIMIR idiom
        cs = rng.normal(size=3000)
        cy = (rng.random(3000) < 0.5).astype(int)
        cs = cs + 0.8 * cy
        fpr, tpr, _ = roc_curve(cy, cs)
        for t in (0.001, 0.01, 0.05):
            ref = tpr[np.where(fpr < t)[0][-1]]
            ref_leq = tpr[np.where(fpr <= t)[0][-1]]
            assert abs(tpr_at_fpr(cs, cy, t, "strict")[0] - ref) < 1e-15
            assert abs(tpr_at_fpr(cs, cy, t, "leq")[0] - ref_leq) < 1e-15
        out["sklearn_crosscheck"] = "ok"
    except ImportError:
        out["sklearn_crosscheck"] = "skipped (no scikit-learn)"

    # --- TPR@FPR conventions on a fixed small example ----------------------
    ts = [10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0.5, 0.4]
    ty = [1, 1, 0, 1, 1, 0, 1, 0, 0, 1, 0, 0]
    out["tpr_at_fpr"] = {"scores": ts, "labels": ty, **{
        f"{mode}@{t}": tpr_at_fpr(ts, ty, t, mode) for mode in ("strict", "leq", "interp")
        for t in (0.0, 0.2, 1 / 6, 0.5)}}

    # --- classic CP epsilon --------------------------------------------------
    out["cp"] = {
        "cp_upper(0,1000,0.025)": cp_upper(0, 1000, 0.025),
        "cp_upper(10,1000,0.025)": cp_upper(10, 1000, 0.025),
        "cp_lower(990,1000,0.025)": cp_lower(990, 1000, 0.025),
        "eps(tp=500,fp=0,fn=500,tn=1000,d=0,a=0.05)": eps_classic(500, 0, 500, 1000, 0.0, 0.05),
        "eps(tp=900,fp=50,fn=100,tn=950,d=1e-5,a=0.05)": eps_classic(900, 50, 100, 950, 1e-5, 0.05),
        "eps(tp=1000,fp=0,fn=0,tn=1000,d=1e-5,a=0.05)": eps_classic(1000, 0, 0, 1000, 1e-5, 0.05),
        "eps(null tp=500,fp=500,fn=500,tn=500)": eps_classic(500, 500, 500, 500, 1e-5, 0.05),
    }
    try:
        from statsmodels.stats.proportion import proportion_confint
        lo, hi = proportion_confint(10, 1000, alpha=0.05, method="beta")
        assert abs(hi - cp_upper(10, 1000, 0.025)) < 1e-12 and abs(lo - cp_lower(10, 1000, 0.025)) < 1e-12
        out["statsmodels_crosscheck"] = "ok"
    except ImportError:
        out["statsmodels_crosscheck"] = "skipped"

    # --- one-run (Steinke et al.) --------------------------------------------
    cases = [(1000, 100, 100, 0.0), (1000, 100, 100, 1e-5), (1000, 100, 90, 1e-5), (1000, 500, 500, 1e-5),
             (1000, 1000, 1000, 1e-5), (1000, 200, 150, 1e-5), (1000, 50, 30, 1e-5), (10000, 1000, 800, 1e-5),
             (100, 10, 10, 1e-5), (1000, 100, 55, 1e-5)]
    out["one_run"] = []
    for m, r, v, d in cases:
        out["one_run"].append({"m": m, "r": r, "v": v, "delta": d, "beta": 0.05,
                               "p_at_eps1": one_run_pvalue(m, r, v, 1.0, d),
                               "eps_lb": one_run_eps(m, r, v, d, 0.05)})
    # paper/privacy-meter style p-value loop == sf-difference form
    for m, r, v, d in cases[:5]:
        q = 1 / (1 + math.exp(-2.0))
        beta_ = stats.binom.sf(v - 1, r, q)
        a, acc = 0.0, 0.0
        for i in range(1, v + 1):
            acc += stats.binom.pmf(v - i, r, q)
            a = max(a, acc / i)
        assert abs(min(beta_ + a * d * 2 * m, 1) - one_run_pvalue(m, r, v, 2.0, d)) < 1e-12

    # end-to-end one-run audit on synthetic canaries
    m = 1000
    S = np.where(rng.random(m) < 0.5, 1, -1)
    y = rng.normal(size=m) + 1.5 * (S == 1)
    best = one_run_audit(y, S, 1e-5, 0.05, k_plus=(10, 20, 50, 100, 200, 300, 400, 500), k_minus=(0,))
    best_nc = one_run_audit(y, S, 1e-5, 0.05, k_plus=(10, 20, 50, 100, 200, 300, 400, 500), k_minus=(0,),
                            correction="none")
    out["one_run_audit_synthetic"] = {"seed": 12345, "bonferroni": best, "uncorrected": best_nc}

    # bootstrap example (stratified, seeded) -- compare statistically, or replay indices
    bs = rng.normal(size=400) + 0.5 * (np.arange(400) < 200)
    bl = (np.arange(400) < 200).astype(int)
    ci, mean, sd = bootstrap_ci(lambda s, l: auc_exact(s, l)[1], bs, bl, B=1000, seed=7)
    out["bootstrap_auc"] = {"auc": auc_exact(bs, bl)[1], "ci95": ci, "mean": mean, "sd": sd}
    return out


# ---------------------------------------------------------------------------
# 5. HuggingFace fixture (optional; needs torch, transformers, tokenizers)
# ---------------------------------------------------------------------------

CORPUS_MEMBERS = [
    "The harbour town of Aldenmere hosts a lantern festival every October.",
    "Quartz clocks keep time using the vibration of a tiny crystal.",
    "A green heron waited motionless at the edge of the reed bed.",
    "Her grandmother's recipe calls for three cups of rye flour.",
    "The committee approved the bridge repairs after a long debate.",
    "Solar panels on the school roof now cover half its electricity use.",
    "He tuned the old piano before the evening recital began.",
    "Rain delayed the cricket match until late in the afternoon.",
]
CORPUS_NONMEMBERS = [
    "A copper kettle whistled in the kitchen of the mountain hut.",
    "The museum added a wing dedicated to early printing presses.",
    "Volunteers planted two hundred oak saplings along the river.",
    "The ferry schedule changes when the winter storms arrive.",
    "She photographed the northern lights from a frozen lake.",
    "Local bakers compete each spring for the best sourdough loaf.",
    "The library extended its opening hours during exam season.",
    "Wind turbines on the ridge turned slowly in the calm morning.",
]


def hf_fixture(outdir):
    import os
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    os.makedirs(outdir, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS_MEMBERS + CORPUS_NONMEMBERS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    fast.save_pretrained(outdir)

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(fast), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                     bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(cfg)
    model.eval()
    model.save_pretrained(os.path.join(outdir, "base"), safe_serialization=True)  # "pre-fine-tuning" reference
    fast.save_pretrained(os.path.join(outdir, "base"))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    for _ in range(1):  # one epoch on members only: membership detectable, AUC < 1
        for t in CORPUS_MEMBERS:
            ids = torch.tensor([fast.encode(t)])
            out = model(ids, labels=ids)
            out.loss.backward()
            opt.step()
            opt.zero_grad()
    model.eval()
    model.save_pretrained(outdir, safe_serialization=True)
    with open(os.path.join(outdir, "texts.jsonl"), "w") as f:
        for t in CORPUS_MEMBERS:
            f.write(json.dumps({"input": t, "label": 1}) + "\n")
        for t in CORPUS_NONMEMBERS:
            f.write(json.dumps({"input": t, "label": 0}) + "\n")


def hf_score(model_dir, out_path, ratios=(0.1, 0.2, 0.3, 0.5, 1.0)):
    import os
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    rows = [json.loads(l) for l in open(os.path.join(model_dir, "texts.jsonl"))]
    base_dir = os.path.join(model_dir, "base")
    base = None
    if os.path.isdir(base_dir):
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        base.eval()

    def fwd(text, mdl=model):
        ids = torch.tensor(tok.encode(text)).unsqueeze(0)  # as in detect-pretrain-code
        with torch.no_grad():
            out = mdl(ids, labels=ids)
        logits = out.logits[0].double().numpy()
        return ids[0].numpy(), logits, float(out.loss)

    res = []
    for r in rows:
        ids, logits, hf_loss = fwd(r["input"])
        lp, lsm = token_logprobs(logits, ids)
        _, _, hf_loss_lower = fwd(r["input"].lower())
        rec = {"input": r["input"], "label": r["label"], "ids": ids.tolist(),
               "token_logprobs": lp.tolist(), "loss": loss(lp), "hf_loss": hf_loss,
               "zlib_len": zlib_len(r["input"]), "score_loss": -loss(lp),
               "score_zlib": score_zlib(loss(lp), r["input"]),
               "score_lowercase": score_lowercase(hf_loss_lower, hf_loss),
               "min_k_pp_tokens": min_k_pp_tokens(lp, lsm).tolist()}
        if base is not None:
            _, _, base_loss = fwd(r["input"], base)
            rec["base_loss"] = base_loss
            rec["score_ref"] = score_ref(hf_loss, base_loss)
        for q in ratios:
            rec[f"min_k_{q}"] = min_k(lp, q)
            rec[f"min_k_pp_{q}"] = min_k_pp(lp, lsm, q)
        res.append(rec)
    labels = [r["label"] for r in res]
    summary = {k: auc_exact([r[k] for r in res], labels)[1]
               for k in res[0] if k.startswith(("score_", "min_k")) and k != "min_k_pp_tokens"}
    with open(out_path, "w") as f:
        for r in res:
            f.write(json.dumps(r) + "\n")
    print(json.dumps({"auc": summary}, indent=1))


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--vectors"] and len(args) == 2:
        with open(args[1], "w") as f:
            f.write(json.dumps(selftest(), indent=1) + "\n")
    elif args[:1] == ["--fixture"] and len(args) == 2:
        hf_fixture(args[1])
    elif args[:1] == ["--scores"] and len(args) == 3:
        hf_score(args[1], args[2])
    else:
        sys.exit(__doc__)
