"""Public datasets read from a user's own copy, converted into this project's one frame and camera.

Owns: nothing itself; ``deepfluoro`` reads DeepFluoro's HDF5 file. Nothing here downloads or bundles data."""
