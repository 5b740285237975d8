"""Registration: from detections to a judged C-arm pose.

Owns: nothing itself; ``pipeline`` (``Registrar``: what is cached per CT, ``detect()``, ``register()``),
``initial_pose`` (where the start comes from: ``GivenPose``, ``RayEmbPnP``, ``PoseRegression``),
``pose_regression`` (the CT's pose-regression network: training, weight file, prediction), ``pose`` (PnP + RANSAC, depth-valley
poses), ``plausibility`` (could this pose have made this X-ray?), ``refine`` (coarse-to-fine DRR refinement, depth
search, batched multi-start), ``rescue`` (rotated restarts for results not accepted), ``similarity`` (the NCC
family), ``verdict`` (accepted / uncertain / rejected from calibrated signals). Details: ``docs/pipeline.md``,
``docs/verdict.md``.
"""
