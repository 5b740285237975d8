"""Write ``Resources/Physics/xray_physics.npz``: the tube spectra and mass attenuation coefficients that the
physics-based X-ray appearance (``rendering/appearance.py``, family ``physics``) reads at run time.

Run once, by a developer, when the tables change (the tool itself never needs these two packages):

    python3 -m venv /tmp/tables && /tmp/tables/bin/pip install spekpy==2.5.4 xraydb==4.5.8 numpy
    /tmp/tables/bin/python scripts/make_physics_tables.py

Contents (energies ``energy_kev`` 10–150 keV in 1-keV bins):

* ``spectra`` (kVp, E): photon fluence per bin of a tungsten-anode tube (SpekPy, Poludniowski et al., Med. Phys.
  2021; 12° anode angle, 2.5 mm Al inherent filtration, normalised to a sum of 1) at ``kvp`` 60–120 kVp in 10-kVp
  steps; more aluminium is added at run time with ``mu_al``.
* ``mu_over_rho`` (material, E): mass attenuation coefficients (cm²/g, total with coherent scattering; XrayDB, Elam
  et al.) of ``materials``: ICRU-44 adipose tissue, ICRU-44 skeletal muscle (soft tissue), ICRU-44 cortical bone,
  iron (steel wires and screws), caesium iodide (the detector) and aluminium (added filtration), by mass fractions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "Resources" / "Physics" / "xray_physics.npz"
ENERGY_KEV = np.arange(10.0, 151.0, 1.0)
KVP = np.arange(60.0, 121.0, 10.0)
#: mass fractions (ICRU Report 44 for the tissues)
MATERIALS = {
    "adipose": {"H": 0.114, "C": 0.598, "N": 0.007, "O": 0.278, "Na": 0.001, "S": 0.001, "Cl": 0.001},
    "soft_tissue": {"H": 0.102, "C": 0.143, "N": 0.034, "O": 0.710, "Na": 0.001, "P": 0.002, "S": 0.003,
                    "Cl": 0.001, "K": 0.004},
    "bone": {"H": 0.034, "C": 0.155, "N": 0.042, "O": 0.435, "Na": 0.001, "Mg": 0.002, "P": 0.103, "S": 0.003,
             "Ca": 0.225},
    "iron": {"Fe": 1.0},
    "csi": {"Cs": 0.5115, "I": 0.4885},
    "aluminium": {"Al": 1.0},
}


def main() -> None:
    import spekpy
    import xraydb

    ev = ENERGY_KEV * 1000.0
    mu = np.stack([sum(w * np.asarray(xraydb.mu_elam(el, ev, kind="total")) for el, w in comp.items())
                   for comp in MATERIALS.values()])
    spectra = []
    for kvp in KVP:
        s = spekpy.Spek(kvp=float(kvp), th=12.0, dk=1.0)
        s.filter("Al", 2.5)
        k, phi = s.get_spectrum()
        spectra.append(np.interp(ENERGY_KEV, k, phi, left=0.0, right=0.0))
    spectra = np.asarray(spectra)
    spectra /= spectra.sum(axis=1, keepdims=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, energy_kev=ENERGY_KEV.astype(np.float32), kvp=KVP.astype(np.float32),
                        spectra=spectra.astype(np.float32), materials=np.array(list(MATERIALS)),
                        mu_over_rho=mu.astype(np.float32))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
