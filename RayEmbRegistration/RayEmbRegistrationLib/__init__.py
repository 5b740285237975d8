"""RayEmbRegistrationLib: the Qt-free core of the RayEmbRegistration 3D Slicer extension.

Markerless 2D/3D registration of an X-ray to a CT with ray embeddings (RayEmb, Shrestha et al., ACCV 2024).
Everything here runs headless (CLI ``rayemb``) and inside Slicer alike; nothing imports qt, ctk, slicer.app
or ScriptedLoadableModule (enforced by ``Testing/Python/test_layout.py``).

Modules, one concept each:
    camera      C-arm geometry: intrinsics, extrinsics, projection, C-arm angles, pose sampling, renderer conventions
    volume      CT volumes (HU, ijk→RAS) and their readers (NIfTI, NRRD, DICOM series)
    xray        X-ray images and their geometry (DICOM XA/RF/CR/DX, PNG/TIFF/NRRD/NIfTI/NPY + JSON sidecar)
    fiducials   3D points: Slicer markups JSON and CSV label,r,a,s
    render      one DRR interface, two backends (nanodrr, DiffDRR)
    model       the ray-embedding network, weight files (safetensors, sha256)
    templates   template poses/DRRs/embeddings per CT (cached)
    detect      point subspaces, scores, 2D detections, heatmaps
    pose        PnP + RANSAC (OpenCV), polish
    refine      image-similarity refinement (coarse-to-fine)
    pipeline    register(): the whole data path with progress and cancel
    report      registration.json, overlay.png
    mrml        adapters to a given MRML scene (slicer-core or Slicer)
    training    generate, train (DDP), finetune
    cli         the ``rayemb`` command
"""

__version__ = "0.1.0"
