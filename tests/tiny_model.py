"""A tiny, randomly initialised chat model built in-process: no files, no hub, ~0.3 s.

Shared by every part that needs a real transformers model in tests (training, serving, deploy).
Shape from docs/../reference/local-models.md §2: a 2-layer Qwen2 (hidden 64) with a byte-level
BPE tokenizer trained on the fly and a ChatML chat template. `initializer_range=0.2` matters: with
the default 0.02 the tied embeddings are so small that LoRA cannot make any token likely, and
policy-gradient toys never learn.

    model, tokenizer = build_tiny_model()
    model_dir = save_tiny_model(tmp_path / "tiny")   # a `from_pretrained`-loadable directory
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The capital of France is Paris. The sky is blue and the grass is green.",
    "You are a helpful assistant. Answer the question in one word, please.",
    "def add(a, b): return a + b  # a tiny function; tests call it with numbers",
    "user assistant system tool: read_file run_tests the proxy ledger turn session token",
    "Hello! How can I help you today? Thanks, that works. No, that is wrong, try again.",
]


def build_tokenizer(vocab_size: int = 512) -> Any:
    """A byte-level BPE (any text encodes) with the ChatML specials and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(_CORPUS * 50, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def build_tiny_model(seed: int = 0, layers: int = 2, hidden: int = 64) -> tuple[Any, Any]:
    """(Qwen2ForCausalLM, tokenizer), deterministic for a given seed."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = build_tokenizer()
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        initializer_range=0.2,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def save_tiny_model(directory: Path, seed: int = 0) -> Path:
    """Write the tiny model + tokenizer as an HF directory (what `resolve_model_dir` returns)."""
    model, tok = build_tiny_model(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory
