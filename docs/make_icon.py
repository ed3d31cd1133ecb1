"""Draws docs/icon.png (400x400, the Comfy Registry icon): step bars computed (blue) / reused (green) under a σ curve.
Run from the repository root: .dev/venv/bin/python docs/make_icon.py"""
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyBboxPatch
fig = plt.figure(figsize=(4, 4), dpi=100)
ax = fig.add_axes([0, 0, 1, 1]); ax.set_xlim(0, 1); ax.set_ylim(0, 1); ax.axis("off")
fig.patch.set_alpha(0)
ax.add_patch(FancyBboxPatch((0.04, 0.04), 0.92, 0.92, boxstyle="round,pad=0,rounding_size=0.12", fc="#1b2430", ec="#58d68d", lw=6))
steps = "CCRRCRRRCRRC"
for i, s in enumerate(steps):
    x = 0.13 + i * 0.063
    h = 0.16 + 0.5 * (1 - i / len(steps)) ** 1.6
    ax.add_patch(FancyBboxPatch((x, 0.2), 0.045, h, boxstyle="round,pad=0,rounding_size=0.01",
                                fc="#3465a4" if s == "C" else "#4e9a06", ec="none"))
t = np.linspace(0, 1, 100)
ax.plot(0.13 + t * 0.74, 0.2 + 0.66 * (1 - t) ** 1.6 + 0.04, color="#f0f0f0", lw=4, solid_capstyle="round")
ax.text(0.5, 0.1, "SenCache", ha="center", va="center", color="white", fontsize=26, weight="bold")
fig.savefig("docs/icon.png", transparent=True)
