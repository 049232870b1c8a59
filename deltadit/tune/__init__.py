"""`deltadit tune`: search Δ-DiT plans and INT8 settings on a model, score them against the uncached
full-precision reference, and report the Pareto front (space -> score -> pareto; cli wires them)."""
