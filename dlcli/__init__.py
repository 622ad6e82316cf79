"""dlcli: the `dl` command for training the classic deep-learning models."""

__version__ = "0.1.0"
