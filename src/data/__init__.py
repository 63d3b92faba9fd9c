"""Data: training datamodules (``src.data.datamodule``), their transforms and on-disk datasets."""
