"""Parameter decomposition: weights as sums of rank-one subcomponents (SPD, arXiv 2506.20790)."""
