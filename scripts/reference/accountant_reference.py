#!/usr/bin/env python3
"""Writes accountant/tests/data/accountant_reference.csv, the reference grid of the accountant's
tests (accountant/tests/reference.rs, accountant/src/pld.rs): Poisson-subsampled Gaussian DP-SGD,
q in QS x sigma in SIGMAS x steps in STEPS at delta = 1e-5, 90 rows.

Command (from the repository root; a separate venv, not the CI one):
    python3 -m venv /tmp/dpvenv
    /tmp/dpvenv/bin/pip install -r scripts/reference/requirements-accountant.txt
    /tmp/dpvenv/bin/python scripts/reference/accountant_reference.py accountant/tests/data/accountant_reference.csv
Options --q, --sigma, --steps (comma-separated) restrict the grid, e.g. to check a few rows:
    /tmp/dpvenv/bin/python scripts/reference/accountant_reference.py /tmp/acc.csv --q 0.001,0.01
--selftest runs the quadrature / closed-form checks of the Edgeworth part instead.
The whole grid took about 35 min wall (one process, on 2 cores shared with other work); the four
10000-step rows at q >= 0.05 and sigma <= 0.8 take 1.5 to 7 min each (dp_accounting's PLD), q = 0.001 takes one minute.
Pins: scripts/reference/requirements-accountant.txt (Python 3.11.7, dp-accounting 0.6.0,
prv-accountant 0.2.0, numpy 2.4.6, scipy 1.17.1). Deterministic: the same versions give the
same bytes.

Columns (numbers printed with 6 significant digits; empty where the library raised):
  eps_pld, eps_pld_remove, eps_pld_add
        dp_accounting PLD (add-or-remove adjacency, value_discretization_interval 1e-4,
        pessimistic connect-the-dots; Koskela, Jalko, Honkela 2020 FFT composition): the max
        over both directions, and each direction's PMF alone.
  eps_pld_optimistic
        the same with pessimistic_estimate=False (privacy buckets). CAUTION: its rounding bias
        grows with the number of steps (up to about steps * 1e-4 in epsilon), so it is NOT a
        usable lower bound or test target; use eps_prv_lower / eps_prv_upper as the bracket.
  eps_rdp
        dp_accounting RDP accountant (default orders; Mironov, Talwar, Zhang 2019).
  eps_prv, eps_prv_lower, eps_prv_upper
        Microsoft prv_accountant PRVAccountant (Gopi, Lee, Wutschitz, "Numerical Composition
        of Differential Privacy", NeurIPS 2021), eps_error 0.01, delta_error 1e-9: estimate,
        lower and upper bound.
  eps_ew0..eps_ew3, eps_ew2_both
        an independent implementation of the Edgeworth accountant (Wang, Gao, Zhang, Shen, Su,
        "Analytical Composition of Differential Privacy via the Edgeworth Accountant", arXiv
        2206.04236; the accountant EW-Tune, Behnia et al., arXiv 2210.15042, calibrates with),
        written from the paper, not from the authors' code: PLLR cumulants by trapezoid
        quadrature, Edgeworth expansion of order 0..3 of the CDF of the summed PLLRs,
        delta(eps) = P_Q(L > eps) - e^eps P_P(L > eps). eps_ew0..3 use only the "remove"
        direction (dominant for this mechanism; also what EW-Tune does); eps_ew2_both is the
        max over both directions (the "add"-direction estimate is unstable).
  ew_lambda3_X/Y, ew_lambda4_X/Y
        standardised third and fourth cumulants of the n-step sums under P (X) and Q (Y).
  ew_uniform_bound_X/Y
        the explicit uniform bound on |F_n - first-order Edgeworth| of Derumigny, Girard,
        Guyonvarch (arXiv 2101.05780, Theorem A.3 / eq. 17), transcribed from their
        BoundEdgeworth R package; it shows how far from rigorous the estimate is.
docs/accounting.md describes what the tests take from each column.
"""
import argparse
import csv
import math
import sys
import time
import warnings

import numpy as np
from scipy import optimize, special

warnings.filterwarnings("ignore")

LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)

# ---------------------------------------------------------------------------
# 1. PLLR of the Poisson-subsampled Gaussian mechanism (sensitivity 1)
#    P = N(0,1)                       (neighbour without the individual)
#    Q = (1-q) N(0,1) + q N(mu,1)     (neighbour with the individual), mu=1/sigma
#    L(x) = log(Q(x)/P(x)) = log(1 - q + q exp(mu x - mu^2/2))
#    X = L(xi), xi ~ P     ;     Y = L(xi), xi ~ Q
# ---------------------------------------------------------------------------


def pllr(x, q, mu):
    if q >= 1.0:
        return mu * x - 0.5 * mu * mu
    return np.logaddexp(math.log1p(-q), math.log(q) + mu * x - 0.5 * mu * mu)


def _central_stats(L, w):
    """Cumulants k1..k6 and absolute central moments of L under weights w."""
    w = w / w.sum()
    m1 = float(np.dot(w, L))
    d = L - m1
    d2 = d * d
    c = {k: float(np.dot(w, d ** k)) for k in range(2, 7)}
    k = [m1, c[2], c[3], c[4] - 3 * c[2] ** 2, c[5] - 10 * c[3] * c[2],
         c[6] - 15 * c[4] * c[2] - 10 * c[3] ** 2 + 30 * c[2] ** 3]
    abs1 = float(np.dot(w, np.abs(d)))
    abs3 = float(np.dot(w, np.abs(d) * d2))
    return {"kappa": k, "E|Z|": abs1, "E|Z|^3": abs3, "EZ^4": c[4]}


def pllr_stats(q, sigma, h=None, span=40.0):
    """Cumulants of X (under P) and Y (under Q) by the trapezoid rule.

    The integrand is analytic and Gaussian-decaying, so the plain trapezoid
    rule on a uniform grid converges exponentially fast in 1/h.  Under Q we
    use E_Q[g(L)] = E_P[e^L g(L)] (change of measure) on the same grid.
    """
    mu = 1.0 / sigma
    if h is None:
        h = min(0.01, 0.02 / mu)
    x = np.arange(-span, span + mu + h, h)
    logw = -0.5 * x * x - LOG_SQRT_2PI
    L = pllr(x, q, mu)
    wP = np.exp(logw)
    wQ = np.exp(logw + L)
    return _central_stats(L, wP), _central_stats(L, wQ)


# ---------------------------------------------------------------------------
# 2. Edgeworth expansion of the survival function of a sum with cumulants K
# ---------------------------------------------------------------------------


def _hermite(z):
    z2 = z * z
    return {
        2: z2 - 1.0,
        3: z * (z2 - 3.0),
        4: z2 * z2 - 6.0 * z2 + 3.0,
        5: z * (z2 * z2 - 10.0 * z2 + 15.0),
        6: z2 ** 3 - 15.0 * z2 * z2 + 45.0 * z2 - 15.0,
        8: z2 ** 4 - 28.0 * z2 ** 3 + 210.0 * z2 * z2 - 420.0 * z2 + 105.0,
    }


def edgeworth_correction(z, K, order):
    """c(z) such that F(x) ~ Phi(z) - phi(z) c(z), 1-F(x) ~ Phibar(z) + phi(z) c(z)."""
    s = math.sqrt(K[1])
    l3 = K[2] / s ** 3
    He = _hermite(z)
    c = l3 / 6.0 * He[2]
    if order >= 2:
        l4 = K[3] / s ** 4
        c += l4 / 24.0 * He[3] + l3 * l3 / 72.0 * He[5]
    if order >= 3:
        l4 = K[3] / s ** 4
        l5 = K[4] / s ** 5
        c += l5 / 120.0 * He[4] + l3 * l4 / 144.0 * He[6] + l3 ** 3 / 1296.0 * He[8]
    return c


def scaled_sf(x, K, order, log_scale=0.0):
    """exp(log_scale) * (1 - F_EW(x)), evaluated without overflow."""
    z = (x - K[0]) / math.sqrt(K[1])
    main = math.exp(log_scale + special.log_ndtr(-z))
    if order == 0:
        return main
    corr = edgeworth_correction(z, K, order)
    return main + math.exp(log_scale - 0.5 * z * z - LOG_SQRT_2PI) * corr


def neg(K):
    return [(-1) ** (j + 1) * K[j] for j in range(6)]


def delta_ew(eps, KX, KY, order, direction="both"):
    """Edgeworth estimate of delta(eps) for the composed mechanism.

    remove: A=Q (mixture), B=P: delta = P(sum Y > eps) - e^eps P(sum X > eps)
    add   : A=P, B=Q, loss -L:  delta = P(-sum X > eps) - e^eps P(-sum Y > eps)
    """
    out = []
    if direction in ("both", "remove"):
        out.append(scaled_sf(eps, KY, order) - scaled_sf(eps, KX, order, eps))
    if direction in ("both", "add"):
        out.append(scaled_sf(eps, neg(KX), order) - scaled_sf(eps, neg(KY), order, eps))
    return max(out)


def eps_from_delta(delta_fn, delta, eps_max=500.0):
    """Smallest-root-free inversion: Brent on [0, hi] with delta_fn decreasing."""
    if delta_fn(0.0) <= delta:
        return 0.0
    hi = 1.0
    while delta_fn(hi) > delta:
        hi *= 2.0
        if hi > eps_max:
            return float("inf")
    return optimize.brentq(lambda e: delta_fn(e) - delta, 0.0, hi, xtol=1e-10, rtol=1e-12)


def eps_ew(q, sigma, steps, delta, order, direction="both", stats=None):
    sP, sQ = stats if stats is not None else pllr_stats(q, sigma)
    KX = [steps * k for k in sP["kappa"]]
    KY = [steps * k for k in sQ["kappa"]]
    return eps_from_delta(lambda e: delta_ew(e, KX, KY, order, direction), delta)


# ---------------------------------------------------------------------------
# 3. Explicit uniform bound on |F_n - first-order Edgeworth| (i.i.d., skewed,
#    no continuity assumption): Derumigny, Girard, Guyonvarch (2021/2023),
#    arXiv:2101.05780, Theorem A.3 / eq. (17), transcribed from the formulas
#    of their BoundEdgeworth R package.  Used only to show its magnitude.
# ---------------------------------------------------------------------------

C_PSI = 1.0253


def _uigamma(a, x):  # unnormalised upper incomplete gamma
    return special.gamma(a) * special.gammaincc(a, x)


def derumigny_bound_iid(n, K4, K3, K3t, lam3, e=0.1):
    r = 1.0 - 3.0 * e
    main = 0.1995 * K3t / math.sqrt(n) + (0.031 * K3t ** 2 + 0.327 * K4 * (1 / 12 + 1 / (4 * r * r))) / n
    e3 = math.exp(e * e / 6 + e * e / (2 * r) ** 2)
    skew = (0.054 * abs(lam3) * K3t + 0.037 * e3 * lam3 ** 2) / n
    P2n = (48 * e * math.sqrt(K4 / n) + 4 * e * e * K4 / n
           + 96 * math.sqrt(2 * e) * abs(lam3) / (K4 ** 0.25 * n ** 0.25)
           + 32 * e * lam3 ** 2 / math.sqrt(K4 * n)
           + 16 * math.sqrt(2) * K4 ** 0.25 * abs(lam3) * e ** 1.5 / n ** 0.75)
    e2n = math.exp(e * e * (1 / 6 + 1 / (2 * r * r) + 2 * P2n / (576 * r * r)))
    den = 2 * r * r * math.pi
    paren = K4 / 12 + 1 / (4 * r * r) + P2n / (576 * r * r)
    G = special.gamma
    A1 = C_PSI / den * abs(lam3) / (6 * n ** 1.5) * 2 ** 0.5 * G(1.5)
    A2 = C_PSI / den * K4 / (24 * n ** 2) * 2 ** 3 * G(4)
    A3 = C_PSI / den * lam3 ** 2 / (36 * n ** 2) * 2 ** 3 * G(4)
    A4 = C_PSI / den * K4 * abs(lam3) / (72 * n ** 2.5) * 2 ** 3.5 * G(4.5)
    A5 = C_PSI / den * K4 ** 2 / (576 * n ** 3) * 2 ** 4 * G(5)
    A6 = C_PSI / math.pi * e2n / (8 * n ** 2) * paren * 2 ** 4 * G(5)
    A7 = C_PSI / math.pi * e2n * abs(lam3) / (12 * n ** 1.5) * paren * 2 ** 3.5 * G(4.5)
    Rn = A1 + A2 + A3 + A4 + A5 + A6 + A7
    mlow = min(math.sqrt(2 * e) * (n / K4) ** 0.25, 2 * math.sqrt(n) / K3t)
    r1n = ((14.1961 + 67.0415) * K3t ** 4 / (16 * math.pi ** 4 * n ** 2)
           + 4.3394 * abs(lam3) * K3t ** 3 / (8 * math.pi ** 3 * n ** 2)
           + Rn + 1.306 * (e2n - e3) * lam3 ** 2 / (36 * n)
           + abs(lam3) * (_uigamma(1.5, mlow) - _uigamma(1.5, 2 * math.sqrt(n) / K3t)) / math.sqrt(n)
           + C_PSI * 2 ** 2.5 * K3 / (3 * math.pi * math.sqrt(n))
           * (_uigamma(1.5, mlow ** 2 / 8) - _uigamma(1.5, 4 * n / (8 * K3t ** 2))))
    return main + skew + r1n


def bound_inputs(s):
    var = s["kappa"][1]
    sd = math.sqrt(var)
    return dict(K4=s["EZ^4"] / var ** 2, K3=s["E|Z|^3"] / sd ** 3,
                K3t=s["E|Z|^3"] / sd ** 3 + s["E|Z|"] / sd, lam3=s["kappa"][2] / sd ** 3)


# ---------------------------------------------------------------------------
# 4. Library accountants
# ---------------------------------------------------------------------------


def pld_eps(q, sigma, steps, deltas, pessimistic=True, vdi=1e-4, with_directions=False):
    from dp_accounting.pld import privacy_loss_distribution as pldlib
    pld = pldlib.from_gaussian_mechanism(
        standard_deviation=sigma, sensitivity=1.0, sampling_prob=q,
        pessimistic_estimate=pessimistic, value_discretization_interval=vdi,
        use_connect_dots=pessimistic)  # connect-the-dots only exists in the pessimistic flavour
    pld = pld.self_compose(steps)
    if not with_directions:
        return [pld.get_epsilon_for_delta(d) for d in deltas]
    # per-direction epsilons (dp_accounting keeps both PMFs; the max is the answer)
    return [(pld.get_epsilon_for_delta(d), pld._pmf_remove.get_epsilon_for_delta(d),  # noqa: SLF001
             pld._pmf_add.get_epsilon_for_delta(d)) for d in deltas]  # noqa: SLF001


def rdp_eps(q, sigma, steps, deltas):
    import dp_accounting
    from dp_accounting import rdp
    acc = rdp.RdpAccountant()  # default orders
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return [acc.get_epsilon(d) for d in deltas]


def prv_eps(q, sigma, steps, deltas, eps_error=0.01, delta_error=1e-9):
    from prv_accountant import PRVAccountant, PoissonSubsampledGaussianMechanism
    acc = PRVAccountant([PoissonSubsampledGaussianMechanism(q, sigma)], eps_error=eps_error,
                        delta_error=delta_error, max_self_compositions=[steps])
    f_n = acc.compute_composition([steps])
    return [tuple(float(v) for v in f_n.compute_epsilon(d, delta_error, eps_error)) for d in deltas]


# ---------------------------------------------------------------------------
# 5. Drivers
# ---------------------------------------------------------------------------

QS = [0.001, 0.004, 0.01, 0.05, 0.1]
SIGMAS = [0.6, 0.8, 1.0, 1.5, 2.0, 4.0]
STEPS = [100, 1000, 10000]
DELTAS = [1e-5]  # the delta = 1e-6 half is dp_accounting_extra.csv (dp_accounting only)

COLUMNS = ["q", "sigma", "steps", "delta", "eps_pld", "eps_rdp", "eps_prv", "eps_prv_lower",
           "eps_prv_upper", "eps_pld_optimistic", "eps_pld_remove", "eps_pld_add",
           "eps_ew0", "eps_ew1", "eps_ew2", "eps_ew3", "eps_ew2_both", "ew_lambda3_X", "ew_lambda3_Y", "ew_lambda4_X",
           "ew_lambda4_Y", "ew_uniform_bound_X", "ew_uniform_bound_Y"]


def _safe(f, *a, **k):
    try:
        return f(*a, **k)
    except Exception as exc:  # noqa: BLE001 - report, keep the grid going
        print("  !", f.__name__, a, type(exc).__name__, str(exc)[:80], file=sys.stderr)
        return None


def run_grid(path, qs=QS, sigmas=SIGMAS, steps_list=STEPS):
    rows = []
    for q in qs:
        for sigma in sigmas:
            stats = pllr_stats(q, sigma)
            sP, sQ = stats
            bX, bY = bound_inputs(sP), bound_inputs(sQ)
            for steps in steps_list:
                t0 = time.time()
                pess = _safe(pld_eps, q, sigma, steps, DELTAS, True, 1e-4, True) or [(None,) * 3] * 2
                opti = _safe(pld_eps, q, sigma, steps, DELTAS, False) or [None, None]
                rdpv = _safe(rdp_eps, q, sigma, steps, DELTAS) or [None, None]
                prvv = _safe(prv_eps, q, sigma, steps, DELTAS) or [(None, None, None)] * 2
                ubX = derumigny_bound_iid(steps, **bX)
                ubY = derumigny_bound_iid(steps, **bY)
                for i, d in enumerate(DELTAS):
                    ew = {o: _safe(eps_ew, q, sigma, steps, d, o, "remove", stats) for o in (0, 1, 2, 3)}
                    ew2b = _safe(eps_ew, q, sigma, steps, d, 2, "both", stats)
                    rows.append(dict(
                        q=q, sigma=sigma, steps=steps, delta=d, eps_pld=pess[i][0], eps_rdp=rdpv[i],
                        eps_prv=prvv[i][1], eps_prv_lower=prvv[i][0], eps_prv_upper=prvv[i][2],
                        eps_pld_optimistic=opti[i], eps_pld_remove=pess[i][1], eps_pld_add=pess[i][2],
                        eps_ew0=ew[0], eps_ew1=ew[1], eps_ew2=ew[2], eps_ew3=ew[3], eps_ew2_both=ew2b,
                        ew_lambda3_X=bX["lam3"] / math.sqrt(steps), ew_lambda3_Y=bY["lam3"] / math.sqrt(steps),
                        ew_lambda4_X=sP["kappa"][3] / sP["kappa"][1] ** 2 / steps,
                        ew_lambda4_Y=sQ["kappa"][3] / sQ["kappa"][1] ** 2 / steps,
                        ew_uniform_bound_X=ubX, ew_uniform_bound_Y=ubY))
                print(f"q={q} sigma={sigma} steps={steps} pld={[p[0] for p in pess]} ({time.time() - t0:.1f}s)",
                      file=sys.stderr, flush=True)
    with open(path, "w", newline="") as fh:
        wr = csv.DictWriter(fh, fieldnames=COLUMNS)
        wr.writeheader()
        for r in rows:
            wr.writerow({k: ("" if r[k] is None else (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]))
                         for k in COLUMNS})
    print("wrote", path, len(rows), "rows", file=sys.stderr)


def selftest():
    # Gaussian (q=1): X ~ N(-mu^2/2, mu^2), Y ~ N(mu^2/2, mu^2); Edgeworth is exact.
    sP, sQ = pllr_stats(1.0, 2.0)
    print("q=1 sigma=2 cumulants X:", np.round(sP["kappa"], 10), " Y:", np.round(sQ["kappa"], 10))
    from scipy.stats import norm
    mu_tot = math.sqrt(100) * 0.5
    exact = norm.cdf(-1.0 / mu_tot + mu_tot / 2) - math.exp(1.0) * norm.cdf(-1.0 / mu_tot - mu_tot / 2)
    KX = [100 * k for k in sP["kappa"]]
    KY = [100 * k for k in sQ["kappa"]]
    print("GDP delta(1) exact", exact, "edgeworth", delta_ew(1.0, KX, KY, 2))
    # quadrature convergence for a subsampled case
    for h in (0.02, 0.01, 0.005):
        sP, sQ = pllr_stats(0.01, 0.8, h=h)
        print("h", h, "kX", ["%.10e" % k for k in sP["kappa"][:4]], "kY1", "%.10e" % sQ["kappa"][0])
    try:
        import mpmath as mp
        mp.mp.dps = 30
        q, mu = 0.01, 1 / 0.8
        f = lambda x: mp.log(1 - q + q * mp.exp(mu * x - mu * mu / 2))
        m1 = mp.quad(lambda x: f(x) * mp.npdf(x), [-mp.inf, 0, mu / 2 + mp.log((1 - q) / q) / mu, mp.inf])
        print("mpmath E_P[L] =", mp.nstr(m1, 15))
    except ImportError:
        pass


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default="accountant_reference.csv", help="CSV to write")
    ap.add_argument("--q", help="comma-separated subset of " + ",".join(map(str, QS)))
    ap.add_argument("--sigma", help="comma-separated subset of " + ",".join(map(str, SIGMAS)))
    ap.add_argument("--steps", help="comma-separated subset of " + ",".join(map(str, STEPS)))
    ap.add_argument("--selftest", action="store_true")
    a = ap.parse_args()
    if a.selftest:
        selftest()
    else:
        run_grid(a.out, [float(x) for x in a.q.split(",")] if a.q else QS,
                 [float(x) for x in a.sigma.split(",")] if a.sigma else SIGMAS,
                 [int(x) for x in a.steps.split(",")] if a.steps else STEPS)
