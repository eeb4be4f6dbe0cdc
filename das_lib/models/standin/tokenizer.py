"""The stand-in's tokenizer, learned from the game's prompts and the context pool."""
from __future__ import annotations

import random

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from das_lib.models.standin.corpus import SENTENCES, sample_context
from das_lib.tasks.pricetag import game as pricetag

## Tokenizer: byte-level BPE (any text can be encoded), digits split one per token like Llama's.

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")


def tokenizer_corpus(seed: int, n_prompts: int = 4000, n_contexts: int = 2000) -> list[str]:
    """Texts the BPE merges are learned from: prompts with their answers, and the context pool."""
    rng = random.Random(seed)
    texts = list(SENTENCES)
    for i in range(n_prompts):
        variant = ("yesno", "truefalse")[i % 2]
        game = pricetag.sample_game(rng)
        texts.append(pricetag.render_prompt(game, "standin", variant) + pricetag.answer_word(pricetag.task_label(game), variant))
    texts += [sample_context(rng) for _ in range(n_contexts)]
    return texts


def build_tokenizer(seed: int, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A fast byte-level BPE tokenizer that prepends <s>, pads on the left and keeps answers whole."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(seed), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)]),
    ])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", padding_side="left",
    )
    for word in (w for pair in pricetag.ANSWERS.values() for w in pair):
        ids = fast(word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:  # the answer must be one token, read off the logits of the last prompt position
            raise RuntimeError(f"answer word {word!r} is {len(ids)} tokens; raise vocab_size")
    return fast

