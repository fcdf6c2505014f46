"""Liu, "Optimization 1 -- Norm reparametrization" (seed 001) and "Optimization 2 -- Elementwise
scale reparametrization" (seed 000): one module per experiment, shared pieces in ``common``."""
