"""Building blocks of the SSL models: encoders, heads, Gaussian head, priors, losses."""
