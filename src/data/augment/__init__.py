"""Image transforms of the datamodules.

- ``transforms``: the CPU transforms on PIL images (the BYOL SSL views, the finetune / probe view,
  the supervised transforms, the normalisation constants).
- ``tensor_ops``: pure, batched tensor ops (resized crop, flip, colour jitter, grayscale, blur,
  solarize, normalize), each the per-sample function of a torchvision / PIL op.
- ``device_views``: the SSL views on the accelerator: view parameters, their per-sample sampling and
  ``DeviceSSLAugment``, the CPU path's 3-view transform computed from uint8 batches on the device.
"""
