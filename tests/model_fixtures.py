"""Tiny random transformers saved as local model folders (no weights downloaded).

``make_tiny_bert`` writes a 2-layer BERT (d_model 32) with a WordPiece tokenizer whose vocabulary
holds a few letter-only words for every letter; ``make_tiny_gpt2`` a 2-layer GPT-2 with a
byte-level BPE tokenizer trained on a few sentences. Both boot through the same TransformerBridge
path as real models.
"""

from __future__ import annotations

from pathlib import Path

LETTERS = "abcdefghijklmnopqrstuvwxyz"
SYLLABLES = ["an", "el", "ix", "or", "um", "ap"]
SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "a small model reads plain english text",
    "sparse autoencoders split activations into features",
    "every letter begins some word in this list",
    "cached activations are shared by every task",
] * 3


def tiny_words() -> list[str]:
    """Six letter-only words per first letter (156 words)."""
    return [letter + syllable for letter in LETTERS for syllable in SYLLABLES]


def make_tiny_bert(folder: Path, *, seed: int = 0, d_model: int = 32, layers: int = 2) -> Path:
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    words = sorted({w for s in SENTENCES for w in s.split()} | set(tiny_words()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ":", ".", ",", "has", "first", "letter",
             "##s", "##ing", *LETTERS, *[w for w in words if w not in LETTERS and w not in {"has", "first", "letter"}]]
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), hidden_size=d_model, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * d_model, max_position_embeddings=64, architectures=["BertForMaskedLM"])
    torch.manual_seed(seed)
    BertForMaskedLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


def make_tiny_gpt2(folder: Path, *, seed: int = 0, d_model: int = 32, layers: int = 2) -> Path:
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(SENTENCES + [" ".join(tiny_words())], vocab_size=400, min_frequency=1,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                  eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    tokenizer.save_pretrained(folder)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=d_model, n_layer=layers, n_head=2, n_positions=64,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        architectures=["GPT2LMHeadModel"])
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    return folder
