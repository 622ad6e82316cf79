"""The special tokens every vocabulary of dl's sequence tasks starts with (ids 0-3), shared by data and models."""

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]
PAD, BOS, EOS, UNK = range(4)
