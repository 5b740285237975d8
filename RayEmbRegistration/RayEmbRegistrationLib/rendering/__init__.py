"""Rendering: digitally reconstructed radiographs (DRRs) and simulated X-rays.

Owns: nothing itself; ``render`` (one ``DRRRenderer`` interface over nanodrr, DiffDRR and Joseph's projector, the
conventions taken from ``geometry.camera``), ``joseph`` (Joseph's slice-stepping projector: the fast CPU backend of
the refinement and of preparation's training DRRs), ``simulate`` (X-rays at known poses for benchmarks, the demo
and the self-check), ``appearance`` (the same X-ray in other appearance families: DiffDRR's, a physics-based
simulator's, mixed).
"""
