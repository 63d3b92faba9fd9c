"""Downstream evaluation of pretrained models: pre-embedding, linear probing and transfer, their summary."""
