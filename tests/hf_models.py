"""Tiny Hugging Face models written with ``save_pretrained``, for the bring-your-own tests."""

from __future__ import annotations

import torch


def tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16,
                        bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def tiny_bert(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=3)
    return BertForSequenceClassification(config).eval()


def save(model, path, **kwargs):
    import logging
    import warnings
    logging.getLogger("transformers").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(path, **kwargs)
    return path


TOKENS = torch.tensor([[1, 5, 7, 2, 9, 3]])
