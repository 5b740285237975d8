"""Training of the ray-embedding network, and the pre-operative preparation of one CT.

Owns: nothing itself; ``prepare`` (``rayemb prepare``: the prepared-CT folder — network fine-tuned on this CT,
templates, readiness), ``generate`` (cached DRR data), ``stream`` (DRRs rendered on the fly), ``anatomy`` (synthetic
patients), ``cts`` (the training CTs and their patients), ``train`` (CPU / GPU / DDP), ``ledger`` (a run's row of
the model card), ``finetune`` (patient-specific, in-process), ``augment`` (images), ``data`` (shards), ``export``
(checkpoint → safetensors). CLI wiring: ``add_*_args`` + ``*_main`` in each command module.
"""
