"""SenCache demo model: a small Wan 2.1-architecture T2V model trained on procedural shape videos (see README.md)."""
