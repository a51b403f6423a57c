# Reference epsilons at tiny delta and long histories for the certified PLD accountant
# (Poisson-subsampled Gaussian, add-or-remove-one adjacency, each job = PoissonSampledDpEvent(q,
# GaussianDpEvent(sigma)) composed `steps` times, jobs composed one after another).
#
# Writes accountant/tests/data/tails_reference.csv (read by accountant/tests/tails.rs).
# Regenerate (took 28 min 44 s wall on 2 cores for the committed CSV; 56 core-minutes):
#   python3 -m venv /tmp/dpvenv
#   /tmp/dpvenv/bin/pip install -r scripts/reference/requirements-accountant.txt
#   /tmp/dpvenv/bin/python scripts/reference/tails_reference.py > accountant/tests/data/tails_reference.csv
# `tails_reference.py A B` computes only the histories [A, B) of tasks() (the header, then their
# rows); e.g. `... tails_reference.py 24 30` checks the six 10000-step histories (12 rows).
# Versions used: Python 3.11.7, dp-accounting 0.6.0, prv-accountant 0.2.0, numpy 2.4.6,
# scipy 1.17.1, mpmath 1.4.1 (x86-64, where numpy's longdouble is 80-bit extended precision).
# Everything but `seconds` is deterministic.
#
# In the committed CSV (84 rows): every eps_pld lies inside [eps_prv_lower, eps_prv_upper]; the
# prv estimate is 0.0003..0.049 % below eps_pld; eps_pld_vdi2 is 0.0004..0.037 % below eps_pld
# (never above); eps_pld_stock differs from eps_pld by up to 1.77 % (delta 1e-10, 1e6 steps), by
# at most 0.0001 % at delta 1e-5; all vdi are 1e-4 except 7e-5 for q=0.003984 sigma=2.89 1e4 steps.
#
# Why the PLD is not simply dp_accounting's PLDAccountant: its self_compose raises the float64
# FFT of the one-step PMF to the n-th power, which leaves a noise floor in every bin. At q=0.001
# sigma=0.8 and 1e6 steps each bin above loss 16 holds about +1.5e-15, so the mass above loss 15
# comes out 7.1e-11 instead of 1.3e-11; at delta = 1e-10 and 1e5..1e6 steps that moves epsilon by
# up to 2 % (there: 14.19 stock against 13.945), in either direction depending on the FFT length
# (tail_mass_truncation 1e-18 instead of 1e-15 gives 13.92). So `eps_pld` uses dp_accounting's own
# one-step PMFs (from_gaussian_mechanism: connect-the-dots, log_mass_truncation_bound -50) and its
# own truncation rules (common.compute_self_convolve_bounds Chernoff windows,
# pld_pmf._truncate_tails, tail_mass_truncation 1e-15 per operation, the package default, counted
# pessimistically as mass at infinity; the accountant class exposes neither it nor
# pessimistic_estimate), but carries out every FFT (the n-th power and the convolutions between
# jobs) in numpy long double, where the same tail falls to ~1e-19 per bin; the result is cast back
# to float64 and epsilon is read off with dp_accounting's DensePLDPmf.get_epsilon_for_delta, max
# over the add and remove PMFs as in PrivacyLossDistribution. It no longer depends on the
# truncation (1e-15 against 1e-17: < 1e-5 relative). `eps_pld_stock` is what PLDAccountant returns.
#
# prv_accountant 0.2.0 is patched in one place: PrivacyRandomVariableTruncated.mean, which the
# CellCentred discretiser uses to shift the grid so that the discrete mean equals the true one,
# integrates the CDF with scipy quad and is wrong when the domain is wide: 2.1 % low for q=0.01
# sigma=1.5 (domain +-89), 1.1 % low for q=0.02 sigma=2. The error is multiplied by the number of
# steps, and unpatched prv then put its whole [lower, upper] bracket below the pessimistic PLD:
# 58.28..58.52 against 58.970 (q=0.01 sigma=1.5 1e6 steps delta 1e-5), 40.87..41.03 against
# 41.138 (q=0.02 sigma=2 3e5 steps), 72.21..73.20 against 73.196 (the second 20-job ledger, eps
# 73..92). Here the mean is E[L | t_min <= L <= t_max] by mpmath quadrature over the Gaussian
# mixture (function truncated_mean); prv's own FFTs are long double already and need no change.
#
# eps_pld_optimistic: dp_accounting has no connect-the-dots for pessimistic_estimate=False and
# falls back to privacy buckets, rounding every loss down to the grid, so after n steps it sits
# roughly n * vdi / 2 below the truth (5.6 at the issue point: 21.79 against 27.41; 0 where
# n * vdi / 2 exceeds epsilon). Halving vdi halves that gap; getting it under 0.1 % would need
# vdi ~ 1e-8..1e-7 and arrays of 1e8+ bins, so it is reported at `vdi` as the strict but loose
# lower bound it is. The discretisation check is eps_pld_vdi2 instead, and the tight two-sided
# check is prv's bracket.
#
# Columns (one row per history and delta; numbers printed with 10 significant digits):
#   history             jobs as q:sigma:steps joined by ';' (same as dp_accounting_extra.csv)
#   delta
#   eps_pld             dp_accounting PLD, pessimistic (connect-the-dots), at `vdi`, long-double FFTs
#   eps_pld_optimistic  the same with pessimistic_estimate=False (privacy buckets, long-double
#                       FFTs): a lower bound, but loose by about steps * vdi / 2 (see above)
#   eps_prv_lower       prv_accountant 0.2.0 PRVAccountant lower bound, mean patched as above
#                       (eps_error = prv_eps_error, delta_error = delta/1000; mesh and domain
#                       built for the smallest delta_error of the history, which is valid for the
#                       larger ones). Empty where prv was skipped as too slow (none in this run).
#   eps_prv_upper       prv_accountant upper bound, same run
#   vdi                 value_discretization_interval used for eps_pld, eps_pld_optimistic,
#                       eps_pld_stock: 1e-4 if the history's smallest eps (over its deltas) is
#                       >= 1, else max(1e-6, 1e-4 * eps) rounded down to one significant digit
#   seconds             wall time of the whole history (every column, every delta) divided by its
#                       number of delta rows
#   eps_pld_vdi2        eps_pld again at vdi/2: a convergence check of the discretisation (the
#                       pessimistic estimate should not grow when vdi halves)
#   eps_pld_stock       dp_accounting.pld.PLDAccountant(ADD_OR_REMOVE_ONE, vdi).get_epsilon(delta),
#                       unmodified (float64 FFT); noisy at delta 1e-10 and long histories
#   eps_prv_estimate    prv_accountant's point estimate, same run as eps_prv_lower/upper
#   prv_eps_error       the eps_error passed to PRVAccountant: 0.2 % of the history's smallest
#                       eps, raised 1.5x at a time while the run would discretise more than
#                       PRV_MAX_POINTS points (only the 10- and 20-job ledgers), up to 1.5 %
#
# Rows: (1) single jobs, (q, sigma) in SETTINGS, steps in {1e5, 3e5, 1e6}, delta in {1e-5, 1e-8,
# 1e-10}, except (0.0405, 3.6955) and (0.02, 2.0) at 1e6 steps (epsilon > 100); plus the issue
# point q=0.0405 sigma=3.6955 steps=112343 (stock dp_accounting gives 27.411 at delta 1e-8).
# (2) dataset-ledger histories of 10 and 20 jobs drawn from numpy.random.default_rng(SEED):
# q log-uniform in [0.001, 0.05] (4 significant digits), sigma uniform in [0.7, 4] (2 decimals),
# steps log-uniform in [1e3, 1e5] (rounded to 10), a history redrawn while the RDP epsilon at
# delta 1e-10 exceeds 100; the first 10-job history is redrawn until its total is 2e5 +- 1e4.
# (3) every setting at 1e4 steps at delta 1e-8 and 1e-10, for continuity with the 1e-6 grid.
import math
import sys
import time
from multiprocessing import Pool

import mpmath
import numpy as np
import scipy.fft as sfft

import dp_accounting
from dp_accounting import rdp
from dp_accounting.pld import common, pld_pmf
from dp_accounting.pld import privacy_loss_distribution as PLD
from prv_accountant import PRVAccountant
from prv_accountant.accountant import compute_safe_domain_size
from prv_accountant.privacy_random_variables import PoissonSubsampledGaussianMechanism
from prv_accountant.privacy_random_variables import PrivacyRandomVariableTruncated

LD = np.longdouble
REL = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
TMT = 1e-15  # dp_accounting's default tail_mass_truncation, per self_compose / compose
SEED = 20240611
SETTINGS = [(0.001, 0.8), (0.004, 1.0), (0.01, 1.5), (0.0405, 3.6955), (0.003984, 2.89), (0.02, 2.0)]
DELTAS = [1e-5, 1e-8, 1e-10]
PRV_REL = 0.002        # prv eps_error relative to the history's smallest epsilon
PRV_MAX_POINTS = 2.5e7 # sum over jobs of discretisation points (~8 us each); beyond it eps_error
PRV_MAX_REL = 0.015    # is raised 1.5x at a time, up to this fraction of epsilon, else prv skipped


def self_compose_ld(pmf, n):
    """dp_accounting's DensePLDPmf.self_compose (same bounds, same bookkeeping), FFT in long double."""
    pmf = pmf.to_dense_pmf()
    p = np.asarray(pmf._probs, dtype=float)
    lo, hi = common.compute_self_convolve_bounds(p, n, TMT)
    out_len = hi - lo + 1
    size = sfft.next_fast_len(max(out_len, len(p)), real=True)
    out = sfft.irfft(sfft.rfft(p.astype(LD), size) ** n, size)
    out = np.roll(out, -lo)[:out_len]
    inf = TMT - math.expm1(n * math.log1p(-pmf._infinity_mass))
    return pld_pmf.DensePLDPmf(pmf._discretization, pmf._lower_loss * n + lo, out.astype(float),
                               inf, pmf._pessimistic_estimate)


def compose_ld(a, b):
    """dp_accounting's DensePLDPmf.compose (same truncation), linear convolution in long double."""
    la, lb = a.size, b.size
    size = sfft.next_fast_len(la + lb - 1, real=True)
    out = sfft.irfft(sfft.rfft(a._probs.astype(LD), size) * sfft.rfft(b._probs.astype(LD), size),
                     size)[:la + lb - 1]
    inf = a._infinity_mass + b._infinity_mass - a._infinity_mass * b._infinity_mass
    off, out, right = pld_pmf._truncate_tails(out, TMT, a._pessimistic_estimate)
    return pld_pmf.DensePLDPmf(a._discretization, a._lower_loss + b._lower_loss + off,
                               np.asarray(out, dtype=float), inf + right, a._pessimistic_estimate)


def pld_ld(jobs, vdi, pessimistic):
    """(remove PMF, add PMF) of the composed history."""
    rem = add = None
    for q, s, n in jobs:
        one = PLD.from_gaussian_mechanism(s, pessimistic_estimate=pessimistic,
                                          use_connect_dots=pessimistic,
                                          value_discretization_interval=vdi, sampling_prob=q,
                                          neighboring_relation=REL)
        r = self_compose_ld(one._pmf_remove, n)
        a = self_compose_ld(one._pmf_add, n)
        rem = r if rem is None else compose_ld(rem, r)
        add = a if add is None else compose_ld(add, a)
    return rem, add


def eps_of(pair, delta):
    return max(p.get_epsilon_for_delta(delta) for p in pair)


def stock(jobs, vdi):
    acc = dp_accounting.pld.PLDAccountant(REL, value_discretization_interval=vdi)
    for q, s, n in jobs:
        acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(s)), n)
    return acc


def rdp_eps(jobs, delta):
    acc = rdp.RdpAccountant()
    for q, s, n in jobs:
        acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(s)), n)
    return acc.get_epsilon(delta)


def choose_vdi(eps_min):
    if eps_min >= 1:
        return 1e-4
    v = max(1e-6, 1e-4 * eps_min)
    e = math.floor(math.log10(v))
    return math.floor(v / 10 ** e) * 10 ** e


def prv_run(jobs, deltas, eps_min):
    """PRVAccountant bounds for each delta, or None where the run would be too large."""
    prvs = [PoissonSubsampledGaussianMechanism(q, s) for q, s, _ in jobs]
    ns = [n for _, _, n in jobs]
    delta_error = min(deltas) / 1000
    ee = PRV_REL * eps_min
    while True:
        L = compute_safe_domain_size(prvs, ns, eps_error=ee, delta_error=delta_error)
        mesh = ee / math.sqrt(sum(ns) / 2 * math.log(12 / delta_error))
        if len(jobs) * 2 * L / mesh <= PRV_MAX_POINTS:
            break
        ee *= 1.5
        if ee > PRV_MAX_REL * eps_min:
            return None, None
    acc = PRVAccountant(prvs=prvs, max_self_compositions=ns, eps_error=ee, delta_error=delta_error)
    f = acc.compute_composition(ns)
    out = {}
    for d in deltas:
        try:
            out[d] = f.compute_epsilon(d, d / 1000, ee)
        except (ValueError, RuntimeError):
            out[d] = None
    return out, ee


def truncated_mean(self):
    """Replaces PrivacyRandomVariableTruncated.mean for the subsampled Gaussian (see header):
    E[L | t_min <= L <= t_max] by mpmath quadrature over the Gaussian mixture, 30 digits."""
    q = mpmath.mpf(float(self.prv.p)); s = mpmath.mpf(float(self.prv.sigma))
    assert self.t_min < math.log1p(-float(q))  # the loss is never below log(1 - q)
    with mpmath.workdps(30):
        x_max = s ** 2 * mpmath.log((mpmath.exp(self.t_max) - (1 - q)) / q) + mpmath.mpf(1) / 2
        dens = lambda x: (1 - q) * mpmath.npdf(x, 0, s) + q * mpmath.npdf(x, 1, s)
        loss = lambda x: mpmath.log(1 - q + q * mpmath.exp((2 * x - 1) / (2 * s ** 2)))
        pts = [p for p in [-40 * s, -5 * s, 0, 1, 5 * s, 40 * s] if p < x_max] + [x_max]
        mass = mpmath.quad(dens, pts)
        return float(mpmath.quad(lambda x: dens(x) * loss(x), pts) / mass)


PrivacyRandomVariableTruncated.mean = truncated_mean


def name(jobs):
    return ";".join(f"{q}:{s}:{n}" for q, s, n in jobs)


def g(x):
    return "" if x is None else ("inf" if x == math.inf else f"{x:.10g}")


def history_rows(task):
    jobs, deltas = task
    t0 = time.time()
    pilot = stock(jobs, 1e-4)
    eps_min = min(pilot.get_epsilon(d) for d in deltas)
    vdi = choose_vdi(eps_min)
    st = pilot if vdi == 1e-4 else stock(jobs, vdi)
    pess = pld_ld(jobs, vdi, True)
    pess2 = pld_ld(jobs, vdi / 2, True)
    opt = pld_ld(jobs, vdi, False)
    eps = {d: eps_of(pess, d) for d in deltas}
    prv, ee = prv_run(jobs, deltas, min(eps.values()))
    secs = (time.time() - t0) / len(deltas)
    rows = []
    for d in deltas:
        lo, est, up = prv[d] if prv and prv.get(d) else (None, None, None)
        rows.append(",".join([name(jobs), f"{d:g}", g(eps[d]), g(eps_of(opt, d)), g(lo), g(up),
                              f"{vdi:g}", f"{secs:.1f}", g(eps_of(pess2, d)), g(st.get_epsilon(d)),
                              g(est), g(ee)]))
    return rows


def ledger(rng, n_jobs, total=None):
    while True:
        jobs = []
        for _ in range(n_jobs):
            q = float(f"{math.exp(rng.uniform(math.log(0.001), math.log(0.05))):.4g}")
            s = round(float(rng.uniform(0.7, 4.0)), 2)
            n = int(round(math.exp(rng.uniform(math.log(1e3), math.log(1e5))), -1))
            jobs.append((q, s, n))
        if total is not None and abs(sum(n for *_, n in jobs) - total) > 1e4:
            continue
        if rdp_eps(jobs, 1e-10) <= 100:
            return jobs


def tasks():
    out = []
    for steps in [100000, 300000, 1000000]:
        for q, s in SETTINGS:
            if steps == 1000000 and (q, s) in [(0.0405, 3.6955), (0.02, 2.0)]:
                continue  # epsilon > 100
            out.append(([(q, s, steps)], DELTAS))
    out.append(([(0.0405, 3.6955, 112343)], DELTAS))
    rng = np.random.default_rng(SEED)
    out.append((ledger(rng, 10, total=200000), DELTAS))
    for _ in range(3):
        out.append((ledger(rng, 10), DELTAS))
    for _ in range(3):
        out.append((ledger(rng, 20), DELTAS))
    for q, s in SETTINGS:
        out.append(([(q, s, 10000)], [1e-8, 1e-10]))
    return out


if __name__ == "__main__":
    t0 = time.time()
    print("history,delta,eps_pld,eps_pld_optimistic,eps_prv_lower,eps_prv_upper,vdi,seconds,"
          "eps_pld_vdi2,eps_pld_stock,eps_prv_estimate,prv_eps_error", flush=True)
    todo = tasks()
    if len(sys.argv) > 1:  # e.g. `tails_reference.py 0 5`: only tasks [0, 5) (for timing)
        todo = todo[int(sys.argv[1]):int(sys.argv[2])]
    # Largest histories first so that the two workers finish together; printed in task order.
    order = sorted(range(len(todo)), key=lambda i: -sum(n for *_, n in todo[i][0]) * len(todo[i][0]))
    with Pool(2) as pool:
        done = dict(zip(order, pool.map(history_rows, [todo[i] for i in order], chunksize=1)))
    for i in range(len(todo)):
        print("\n".join(done[i]), flush=True)
    print(f"total {time.time() - t0:.0f} s", file=sys.stderr)
