"""Training of the ray-embedding network: ``generate`` (cached DRR data), ``stream`` (DRRs rendered on the fly),
``anatomy`` (synthetic patients), ``cts`` (the training CTs and their patients), ``train`` (CPU / GPU / DDP),
``ledger`` (a run's row of the model card), ``finetune`` (patient-specific, self-supervised), ``augment``
(images). CLI wiring: ``add_*_args`` + ``*_main`` in each command module."""
