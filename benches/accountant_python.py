"""Times dp_accounting (PLD at value_discretization_interval 1e-4, RDP) and prv_accountant
(eps_error 0.01, delta_error delta/1000) on the settings ewtune's accountant bench printed, and
prints both side by side. Called by benches/accountant_compare.sh with the bench's JSON lines."""
import json
import sys
import time
import warnings

warnings.filterwarnings("ignore")
import dp_accounting  # noqa: E402
from dp_accounting import pld, rdp  # noqa: E402
from prv_accountant import PRVAccountant, PoissonSubsampledGaussianMechanism  # noqa: E402


def timed(f):
    t = time.perf_counter()
    try:
        v = f()
    except Exception as exc:  # noqa: BLE001 - report the library's failure, keep going
        v = f"fail: {type(exc).__name__}"
    return v, time.perf_counter() - t


def dp_pld(q, s, n, d):
    acc = pld.PLDAccountant(dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=1e-4)
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(s)), n)
    return acc.get_epsilon(d)


def dp_rdp(q, s, n, d):
    acc = rdp.RdpAccountant()
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(s)), n)
    return acc.get_epsilon(d)


def prv(q, s, n, d):
    acc = PRVAccountant([PoissonSubsampledGaussianMechanism(q, s)], eps_error=0.01, delta_error=d / 1000,
                        max_self_compositions=[n])
    return acc.compute_epsilon(d, [n])[2]  # the upper bound


def main():
    lines = [json.loads(line) for line in open(sys.argv[1])]
    rows = [r for r in lines if "q" in r]
    worst = [r for r in lines if "worst" in r]
    full = "--full" in sys.argv
    print(f"{'q':>6} {'sigma':>5} {'steps':>8} {'delta':>6} | {'ewtune cert':>11} {'time':>8} | {'EW2':>8} {'time':>8} |"
          f" {'dp PLD':>8} {'time':>8} | {'PRV up':>8} {'time':>8} | {'dp RDP':>8} {'time':>7} | PLD/ewtune")
    for r in rows:
        q, s, n, d = r["q"], r["sigma"], r["steps"], r["delta"]
        if n >= 1_000_000 and not full:
            pl = pv = ("skip", float("nan"))
        else:
            pl = timed(lambda: dp_pld(q, s, n, d))
            pv = timed(lambda: prv(q, s, n, d))
        rd = timed(lambda: dp_rdp(q, s, n, d))
        fmt = lambda v: f"{v:8.4f}" if isinstance(v, float) else f"{str(v)[:8]:>8}"
        ratio = pl[1] / r["certified_s"] if pl[1] == pl[1] else float("nan")
        print(f"{q:>6} {s:>5} {n:>8} {d:>6.0e} | {r['certified_upper']:11.4f} {r['certified_s'] * 1e3:6.2f}ms |"
              f" {r['edgeworth']:8.4f} {r['edgeworth_us']:6.1f}us | {fmt(pl[0])} {pl[1]:7.3f}s | {fmt(pv[0])} {pv[1]:7.3f}s |"
              f" {fmt(rd[0])} {rd[1]:6.3f}s | {ratio:8.0f}x", flush=True)
    if worst:
        print("\newtune's slowest accepted calls and refusals at the work caps (one run each):")
        for w in worst:
            print(f"  {w['s']:6.3f}s  {w['worst']}: {w['result']}")


if __name__ == "__main__":
    main()
