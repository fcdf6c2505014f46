"""Wu, Dobriban, Ren, Wu, Li, Gunasekar, Ward, Liu, "Implicit regularization and convergence for weight
normalization", NeurIPS 2020 (seed 002): one module per experiment, shared pieces in ``common``."""
