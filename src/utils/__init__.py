"""Small shared helpers: densities, plain-value conversion, I/O."""
