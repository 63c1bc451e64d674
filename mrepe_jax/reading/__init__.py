"""Reading: activations at named sites, concept prototypes and directions (eq 1, 6), causal effects
(eq 2) with bootstrap confidence intervals."""
