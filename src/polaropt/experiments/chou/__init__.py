"""Chou, Rauhut, Ward 2023, "Robust implicit regularization via weight normalization" (seed 003): one
module per experiment."""
