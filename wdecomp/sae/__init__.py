"""Sparse autoencoders on any hook point, scored with SAELens' metrics on the honest scale."""
