"""Development kit: boots the real ComfyUI in-process, builds tiny checkpoints from ComfyUI's own model
classes, and starts a real ComfyUI server. Used by tests, the demo and the benchmarks; never by the pack."""
