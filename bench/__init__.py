"""The SenCache pack's benchmarks and demo (not part of the pack itself; never imported by ComfyUI). One entry point:
`python -m bench <command>` (bench/__main__.py lists the commands; results/README.md maps each published number to
its command and file)."""
