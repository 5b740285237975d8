"""Detection: where 3D points project in an X-ray, from ray embeddings.

Owns: nothing itself; ``model`` (the encoder–decoder, its weight files: safetensors + sha256), ``templates``
(template DRRs of a CT, their embeddings and tiles, the on-disk cache), ``detect`` (one subspace per point, the
score ‖Uᵀe‖/‖e‖, peaks, confidence and contrast, heatmaps). Details: ``docs/network.md``.
"""
