"""The TUI's screens: one per mode (models, sql, scale, trajectory, diffusion, map), plus the
model detail screen and the help."""
