"""tfmp's version: one place, read by setup.cfg, the package and its checkpoints."""

VERSION = "0.2.0"
