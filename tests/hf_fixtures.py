"""A tiny randomly initialised BERT saved as a transformers directory, for the real-text paths' tests.

No download: the vocabulary is written here (BERT's special tokens at BERT's ids 0/100/101/102/103, so
robustmsa's [UNK]/[CLS]/[SEP] conventions hold) and the weights come from a seeded ``BertConfig``.
"""

from __future__ import annotations

from pathlib import Path

WORDS = ("the movie was really good bad not very great awful i liked it hated plot acting boring fun and but "
         "so too much story this that is a an of to in what did he she they we you film end loved").split()


def make_tiny_bert_dir(directory: Path, *, hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0) -> Path:
    """Write a tiny BERT (config, weights, WordPiece tokenizer) into ``directory`` and return it."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += list("abcdefghijklmnopqrstuvwxyz") + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + list(WORDS)
    (directory / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n", encoding="utf-8")
    # from_pretrained on a directory holding only vocab.txt works across transformers 4.x and 5.x
    tokenizer = BertTokenizerFast.from_pretrained(str(directory), do_lower_case=True)
    tokenizer.save_pretrained(str(directory))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=128)
    BertModel(config).eval().save_pretrained(str(directory))
    return directory
