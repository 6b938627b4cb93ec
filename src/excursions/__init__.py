"""excursions: when and how should RL be used while training a language model?

Pretrain a model (or take a real run's checkpoints), branch post-training *excursions* (RL, SFT,
SFT-Gold, SFT->RL, parallel averaging) off every checkpoint, and evaluate them all the same way.
"""

__version__ = "0.1.0"
