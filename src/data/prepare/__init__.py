"""Dataset writers: what the ``prepare_*`` / ``build_*`` scripts run to put a dataset on disk.

- ``demo_data``: the embedded demo (digits ID, held-out digits near-OOD, photos / noise far-OOD).
- ``fashion_mnist_data``: Fashion-MNIST's original IDX files (install, check, read) and its two OOD protocols.
- ``imagenet_subset``: an ImageNet 1 % / 10 % root from a SimCLR subset list (D-Q2).
- ``ood_sources``: the image sources and file helpers the demo and Fashion-MNIST writers share.
"""
