"""The names of the bounds :meth:`~lirpa_reweight.core.bounds.BoundedClassifier.certify` computes. Plain Python,
so that the reports can order their columns by it without importing torch."""

#: Cheapest first: what training bounds with and what the evaluation verifies with (an example is verified when
#: every margin lower bound is positive).
BOUND_METHODS = ("IBP", "CROWN-IBP", "CROWN", "alpha-CROWN")
