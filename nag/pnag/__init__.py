"""The NAG core: triplets, Pareto dominance, the evaluator and the budget-conditioned generator."""
