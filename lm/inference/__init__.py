"""Using a trained model: opening a run, sampling and KV-cache generation, continuous
batching, inspecting one prediction, scoring synthetic tasks, the one-file model format and
its numpy-only runner."""
