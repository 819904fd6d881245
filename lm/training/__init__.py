"""Training a run: the loss, optimizer and jitted train step, the mesh and shardings,
checkpoints, the loop over steps that owns a run directory, and the dry run."""
