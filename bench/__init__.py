"""Benchmark and demo entry points of the SenCache pack (not part of the pack itself; never imported by ComfyUI)."""
