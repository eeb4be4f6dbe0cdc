"""Everything that determines the stand-in, and the Llama configuration it makes."""
from __future__ import annotations

from dataclasses import dataclass, field

from transformers import LlamaConfig, PreTrainedTokenizerFast

from das_lib.models.game_training import GameTraining


@dataclass
class StandinConfig(GameTraining):
    """Everything that determines the stand-in: architecture, data mix and optimisation (and `GameTraining`'s)."""

    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 256
    num_layers: int = 4
    num_heads: int = 8
    steps: int = 2200
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    variant_mix: dict[str, float] = field(default_factory=lambda: {"yesno": 0.6, "truefalse": 0.4})
    context_rate: float = 0.3  # share of steps with an irrelevant context in front of the instruction
    context_after: float = 0.3  # no contexts in this first share of the steps
    context_chunks: int = 4  # a context step is computed in this many chunks of similar length
    # Interchange intervention training (Geiger et al. 2022): a share of every batch are counterfactual
    # pairs of a causal model (by default Left and Right Boundary) whose variables are swapped, each inside
    # a fixed random subspace at one site, trained to give the causal model's counterfactual answer. This
    # plants a known mechanism, so the book can check that Boundless DAS recovers it. 0 trains plainly.
    iit_rate: float = 0.25
    iit_layer: int = 1
    iit_position: str = "last"  # the only position it can plant at (das_lib.models.standin.planted.plantable)
    iit_dims: int = 4  # dimensions of the planted subspace of each variable
    iit_program: str = "left_right"  # a hypothesis key, or a candidate key of das_lib.tasks.pricetag.programs.space()


def model_config(cfg: StandinConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    """A tiny LlamaForCausalLM configuration."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
