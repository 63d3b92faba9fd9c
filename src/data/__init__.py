"""Data: datasets on disk, their writers, the image transforms and the Lightning datamodules.

- ``prepare/``: dataset writers (the demo data, Fashion-MNIST's files and OOD protocols, ImageNet
  subsets), run by the ``prepare_*`` / ``build_*`` scripts.
- ``dataset/``: datasets read from disk (image lists, image files, the SUN397 / Flowers-102 splits,
  embedding files, Fashion-MNIST images).
- ``augment/``: transforms (CPU/PIL transforms; pure tensor ops; the SSL views on the device).
- ``datamodule/``: the training datamodules (``DATAMODULES``) and the linear-probe datamodules
  (``TRANSFER_DATAMODULES``).

``src.data`` imports only ``src.utils`` (and may import ``src.model``), never training, OOD,
downstream or report code.
"""
