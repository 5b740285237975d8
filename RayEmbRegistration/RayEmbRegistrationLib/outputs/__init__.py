"""Outputs: what a registration or a detection leaves on disk.

Owns: nothing itself; ``report`` (``registration.json``, ``detections.json``, ``scene.mrb`` through ``mrml``; output
folders checked before any work and written all or nothing) and ``overlay`` (``overlay.png`` and display images).
"""
