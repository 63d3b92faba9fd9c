"""Reports: the OOD study's tables and figures, the demo and Fashion-MNIST reports, the linear-probing summary."""
