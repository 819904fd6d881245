"""The machine: the matmul peak it reaches, the precision it multiplies in natively, and the
XLA environment set before JAX starts."""
