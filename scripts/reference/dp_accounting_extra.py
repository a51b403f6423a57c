# Writes accountant/tests/data/dp_accounting_extra.csv (read by accountant/tests/reference.rs):
# dp_accounting 0.6.0 PLD (PLDAccountant, add-or-remove, vdi 1e-4) and RDP for the delta=1e-6
# half of the reference grid (accountant_reference.py writes the delta=1e-5 half, with more
# columns) less the four 10000-step rows at q >= 0.05, sigma <= 0.8 that take minutes each, and
# two heterogeneous histories at delta=1e-5. Numbers printed with 6 significant digits.
#
# Command (from the repository root; the venv of requirements-accountant.txt, not the CI one):
#   /tmp/dpvenv/bin/python scripts/reference/dp_accounting_extra.py > accountant/tests/data/dp_accounting_extra.csv
# Takes about a minute on one core. Pins: scripts/reference/requirements-accountant.txt
# (Python 3.11.7, dp-accounting 0.6.0, numpy 2.4.6, scipy 1.17.1). Deterministic.
import sys, time, math
import dp_accounting
from dp_accounting import pld, rdp
def pld_eps(events, d):
    acc = pld.PLDAccountant(dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE, value_discretization_interval=1e-4)
    for q, s, n in events:
        acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(s)), n)
    return acc.get_epsilon(d)
def rdp_eps(events, d):
    acc = rdp.RdpAccountant()
    for q, s, n in events:
        acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(s)), n)
    return acc.get_epsilon(d)
print("history,delta,eps_pld,eps_rdp", flush=True)
for ev in [[(0.01, 1.0, 500), (0.004, 0.8, 2000)], [(0.05, 2.0, 300), (0.001, 0.7, 1000), (0.02, 1.2, 700)]]:
    name = ";".join(f"{q}:{s}:{n}" for q, s, n in ev)
    print(f"{name},1e-05,{pld_eps(ev,1e-5):.6g},{rdp_eps(ev,1e-5):.6g}", flush=True)
for steps in [100, 1000, 10000]:
    for q in [0.001, 0.004, 0.01, 0.05, 0.1]:
        for s in [0.6, 0.8, 1.0, 1.5, 2.0, 4.0]:
            if steps == 10000 and q >= 0.05 and s <= 0.8:
                continue  # minutes each in dp_accounting
            ev = [(q, s, steps)]
            print(f"{q}:{s}:{steps},1e-06,{pld_eps(ev,1e-6):.6g},{rdp_eps(ev,1e-6):.6g}", flush=True)
