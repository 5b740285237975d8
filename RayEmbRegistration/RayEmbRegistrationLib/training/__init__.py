"""Training of the ray-embedding network: ``generate`` (cached DRR data), ``train`` (CPU / GPU / DDP),
``finetune`` (patient-specific, self-supervised). CLI wiring: ``add_*_args`` + ``*_main`` in each module."""
