"""CS182 discussion "Optimizers as penalized linear improvement", "RMS norm" and "Optimizers and their
convergence" (seed 004): one module per experiment, shared pieces in ``common``."""
