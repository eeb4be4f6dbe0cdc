"""The stand-in for Alpaca 7B: a small Llama model trained from scratch on the price-tagging game.

Read top to bottom: the irrelevant-context pool, the tokenizer, the model config, the training data
mix, the training loop, the measurements, and `build`, which makes the directory shipped as
das_lib/assets/standin (`python -m das_lib.models.standin` rebuilds it, under 10 minutes on two cores).

The model answers like Alpaca: the prompt is rendered with pricetag's "standin" template and the
answer word (Yes/No, or True/False for the sibling instruction) is the first token after it. Only
that answer token is trained (cross-entropy at the last prompt position); nothing else is needed
for the game. The data mix holds instructions and contexts that the robustness chapters do NOT use
verbatim, so those chapters test the alignment on inputs it was not trained on.
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from das_lib.pricetag import game as pricetag

if TYPE_CHECKING:
    import pandas as pd

    from das_lib.method.interventions import DASIntervention

ASSET_DIR = Path(__file__).resolve().parents[1] / "assets" / "standin"
TRAINING_RECORD = "standin_training.json"

# The robustness study tests these contexts; training must never see them.
HELD_OUT_CONTEXTS = ("Pricing tag game!", "Fruitarian Frogs May Be Doing Flowers a Favor")

# ---------------------------------------------------------------------------------------------
# Irrelevant contexts: sentences on many topics, recombined into headlines, word salads and
# passages, plus made-up words so that the model meets word pieces it has never seen as words.

SENTENCES = (
    "The weather was cold and windy all morning.",
    "She planted tomatoes along the southern fence.",
    "Our train left the station twenty minutes late.",
    "A small boat drifted slowly across the harbor.",
    "The museum opens a new exhibit on ancient maps next week.",
    "He forgot his umbrella at the bakery again.",
    "Owls can turn their heads much farther than people can.",
    "The committee will vote on the proposal on Thursday.",
    "Bright lanterns hung from every window of the old street.",
    "My neighbor keeps three cats and a very loud parrot.",
    "Scientists measured the depth of the lake with sound waves.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Children were playing football in the park until dark.",
    "A thick fog rolled in from the sea before sunrise.",
    "The library extended its hours during the exam season.",
    "Volcanic soil is often rich in minerals.",
    "The orchestra tuned their instruments before the concert.",
    "Please remember to water the plants while I am away.",
    "The mountain trail is closed because of falling rocks.",
    "Engineers tested the bridge with heavy trucks.",
    "Honeybees communicate the location of flowers by dancing.",
    "The festival attracted visitors from many countries.",
    "Our team finished the project ahead of schedule.",
    "The river flooded the lower fields after the storm.",
    "Cooking rice properly takes patience and the right amount of water.",
    "The old clock in the hallway stopped at midnight.",
    "Dolphins sleep with one half of their brain at a time.",
    "The city council approved a plan for more bicycle lanes.",
    "A quiet village sits at the end of the valley.",
    "Fresh snow covered the rooftops overnight.",
    "The students built a robot that sorts colored blocks.",
    "Astronomers spotted a comet near the edge of the solar system.",
    "The cafe on the corner serves the best soup in town.",
    "Migrating geese fly south in long V-shaped lines.",
    "The painter mixed blue and yellow to make a soft green.",
    "Heavy rain delayed the opening of the outdoor market.",
    "Grandmother told us stories about her childhood farm.",
    "The software update fixed several small bugs.",
    "Penguins huddle together to stay warm in winter.",
    "The lighthouse keeper watched the ships pass by.",
    "A new species of beetle was found in the rainforest.",
    "The marathon route winds through the historic district.",
    "Tea leaves are dried and rolled by hand in some regions.",
    "The kitten chased a ribbon across the kitchen floor.",
    "Local farmers sell honey and cheese every Saturday.",
    "The ancient castle was rebuilt after a great fire.",
    "Wind turbines turned slowly on the distant hills.",
    "Octopuses can change the color and texture of their skin.",
    "The choir rehearsed the new song three times.",
    "Ice cream melts quickly on a hot summer afternoon.",
    "The detective noticed a muddy footprint near the door.",
    "Tall sunflowers always face the morning sun.",
    "The bus driver waved to every child at the stop.",
    "Whales sing long songs that travel for many miles.",
    "The garden gate creaked whenever the wind blew.",
    "Our class visited a factory that makes glass bottles.",
    "The desert blooms briefly after a rare spring rain.",
    "Pilots check the weather before every flight.",
    "The baker wakes up at four to prepare fresh bread.",
    "Mushrooms grow best in dark and damp places.",
    "A gentle breeze carried the smell of pine trees.",
    "The chess tournament lasted for nine long rounds.",
    "Coral reefs shelter thousands of kinds of fish.",
    "The violinist played a slow melody for the guests.",
    "Sheep grazed quietly on the green hillside.",
    "Recycling paper saves water and energy.",
    "The hikers reached the summit just before noon.",
    "Elephants remember the paths to distant water holes.",
    "The newspaper printed a correction the next day.",
    "Butterflies taste with their feet.",
    "Welcome to the weekly puzzle hour!",
    "Breaking news from the northern islands.",
    "Note: the office is closed on public holidays.",
    "Chapter seven begins on a rainy evening in the harbor town.",
    "Warning: the floor may be slippery when wet.",
    "Thank you for reading our spring newsletter!",
)

_SYLLABLES = ("ka", "lo", "mi", "zu", "tre", "vox", "pal", "qui", "ren", "dor", "sy", "bel", "fin", "gor",
              "nua", "pex", "wim", "jo", "hal", "cru", "ost", "ix", "ern", "ulm", "yad", "sto", "bri", "zen")
_PUNCT = ("!", ".", "?", "", ":", "...")


_WORDS = tuple(w.strip(".,!?:").lower() for s in SENTENCES for w in s.split())


def _words(rng: random.Random, k: int) -> list[str]:
    """k words taken from the sentence pool (lower-cased, punctuation stripped)."""
    return [rng.choice(_WORDS) for _ in range(k)]


def _made_up_word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4)))


def sample_context(rng: random.Random) -> str:
    """One irrelevant context: a sentence, a passage, a headline, an exclamation or word salad."""
    kind = rng.choice(("sentence", "passage", "headline", "exclamation", "salad", "made_up"))
    if kind == "sentence":
        text = rng.choice(SENTENCES)
    elif kind == "passage":  # a few sentences, like a paragraph of a story
        text = " ".join(rng.sample(SENTENCES, rng.randint(2, 3)))
    elif kind == "headline":  # Title Case Like A News Headline
        text = " ".join(w.capitalize() for w in _words(rng, rng.randint(3, 9)))
    elif kind == "exclamation":
        text = " ".join(_words(rng, rng.randint(1, 3))).capitalize() + rng.choice(("!", "!!", "?", "."))
    elif kind == "salad":
        text = " ".join(_words(rng, rng.randint(2, 10))) + rng.choice(_PUNCT)
    else:  # words the tokenizer has never seen whole: they arrive as unfamiliar pieces
        words = [_made_up_word(rng) for _ in range(rng.randint(1, 5))]
        words = [w.capitalize() if rng.random() < 0.5 else w for w in words]
        text = " ".join(words) + rng.choice(_PUNCT)
    if text in HELD_OUT_CONTEXTS:  # never train on the contexts the robustness study tests
        return sample_context(rng)
    return text


# ---------------------------------------------------------------------------------------------
# Tokenizer: byte-level BPE (any text can be encoded), digits split one per token like Llama's.

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


# ---------------------------------------------------------------------------------------------
# Model and training configuration


@dataclass
class StandinConfig:
    """Everything that determines the stand-in: architecture, data mix and optimisation."""

    seed: int = 0
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
    hard_rate: float = 0.5  # share of examples whose amount lies within `hard_cents` of a bound
    hard_cents: int = 40
    context_chunks: int = 4  # a context step is computed in this many chunks of similar length
    # Interchange intervention training (Geiger et al. 2022): a share of every batch are counterfactual
    # pairs of the Left and Right Boundary model whose L and R are swapped inside a fixed random
    # subspace at one site, trained to give the causal model's counterfactual answer. This plants a
    # known mechanism, so the book can check that Boundless DAS recovers it. 0 trains plainly.
    iit_rate: float = 0.25
    iit_layer: int = 1
    iit_position: str = "last"
    iit_dims: int = 4  # dimensions of the planted subspace of each variable
    threads: int = 2  # the two cores of the machine the book targets


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


# ---------------------------------------------------------------------------------------------
# Training data: games, instruction variants and contexts mixed per example


def sample_training_game(rng: random.Random, cfg: StandinConfig) -> dict[str, int]:
    """A game with Yes/No balanced; half of them with the amount close to a bound (the hard cases)."""
    lb, ub = pricetag.sample_bracket(rng)
    if rng.random() < cfg.hard_rate:
        bound = rng.choice((lb, ub))
        amount = min(999, max(1, bound + rng.randint(-cfg.hard_cents, cfg.hard_cents)))
        return {"lb": lb, "ub": ub, "amount": amount}
    region = rng.choice((1, 2, 2, 3))  # half inside: Yes as often as No
    return pricetag.sample_in_region(rng, region, (lb, ub))


def sample_example(rng: random.Random, cfg: StandinConfig, with_context: bool) -> tuple[str, str]:
    """(prompt, answer word) for one training example."""
    game = sample_training_game(rng, cfg)
    variant = rng.choices(list(cfg.variant_mix), weights=list(cfg.variant_mix.values()))[0]
    context = sample_context(rng) if with_context else None
    prompt = pricetag.render_prompt(game, "standin", variant, context)
    return prompt, pricetag.answer_word(pricetag.task_label(game), variant)


def sample_batch(rng: random.Random, cfg: StandinConfig, step: int) -> list[list[tuple[str, str]]]:
    """One step's examples, as chunks of similar length (contexts vary a lot: less padding to compute).

    A step holds either plain prompts or prompts with a context, in proportion `context_rate`, once
    `context_after` of the steps are done (the game is learnt first, ignoring contexts after).
    """
    with_context = step >= cfg.context_after * cfg.steps and rng.random() < cfg.context_rate
    examples = [sample_example(rng, cfg, with_context) for _ in range(cfg.batch_size)]
    if not with_context:
        return [examples]
    examples.sort(key=lambda e: len(e[0]))
    size = math.ceil(cfg.batch_size / cfg.context_chunks)
    return [examples[i : i + size] for i in range(0, len(examples), size)]


def encode_batch(tokenizer: PreTrainedTokenizerFast, examples: Sequence[tuple[str, str]]) -> tuple[dict, torch.Tensor]:
    """Left-padded prompts and the token id of each answer."""
    inputs = tokenizer([p for p, _ in examples], return_tensors="pt", padding=True)
    answers = torch.tensor([tokenizer.convert_tokens_to_ids(a) for _, a in examples])
    return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}, answers


def lr_at(step: int, cfg: StandinConfig) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))


def train(
    cfg: StandinConfig, log_every: int = 100, evaluate: Callable[[LlamaForCausalLM, PreTrainedTokenizerFast], None] | None = None
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast, dict]:
    """Build the tokenizer and train the model from `cfg.seed`; returns (model, tokenizer, record).

    Every `log_every` steps it prints the batch loss and accuracy and calls `evaluate(model, tokenizer)`.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)  # restored below: the caller's setting is the caller's
    try:
        return _train(cfg, log_every, evaluate)
    finally:
        torch.set_num_threads(threads)


def planted_subspace(cfg: StandinConfig) -> "DASIntervention":
    """The fixed random subspaces (`iit_dims` rotated dims for L, as many for R) that IIT plants,
    drawn from `cfg.seed` alone, so they can be drawn again without the model."""
    from das_lib.method.interventions import DASIntervention

    with torch.random.fork_rng(devices=[]):  # leaves the training's random stream untouched
        torch.manual_seed(cfg.seed + 2)
        intervention = DASIntervention(cfg.hidden_size, cfg.iit_dims, n_variables=2)
    return intervention.requires_grad_(False)  # the planted subspace stays where it was drawn


class PlantedMechanism:
    """The IIT part of training: a fixed random subspace per variable of the Left and Right Boundary
    model at one site, and the loss that makes swapping it act like swapping L or R."""

    def __init__(self, cfg: StandinConfig, tokenizer: PreTrainedTokenizerFast):
        from das_lib.method.sites import Site
        from das_lib.pricetag.task import PriceTagTask

        self.meta = planted_meta(cfg)
        self.site = Site(cfg.iit_layer, cfg.iit_position)
        self.task = PriceTagTask(tokenizer, "standin")
        self.intervention = planted_subspace(cfg)

    def loss_sum(self, model: LlamaForCausalLM, rng: random.Random, n: int) -> tuple[torch.Tensor, int]:
        """Summed cross-entropy of `n` fresh interchange pairs, and how many the model got right."""
        from das_lib.method.sites import capture, intervened_logits

        pairs = pricetag.sample_pairs(self.meta["hypothesis"], n, rng.randrange(2**31))  # labels from the causal model
        data = self.task.interchange_data(pairs, self.site.position)
        source = capture(model, self.site, data.source, data.source_pos)
        logits = intervened_logits(model, self.site, data.base, data.base_pos, source, self.intervention, data.variable)
        loss = torch.nn.functional.cross_entropy(logits, data.labels, reduction="sum")
        return loss, int((logits.argmax(-1) == data.labels).sum())


def _train(cfg: StandinConfig, log_every: int, evaluate: Callable | None) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast, dict]:
    """The training loop of `train`, run with `cfg.threads` threads."""
    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer(cfg.seed, cfg.vocab_size)
    config = model_config(cfg, tokenizer)
    config._attn_implementation = "eager"  # the same attention; for heads this small, faster than SDPA on a CPU
    model = LlamaForCausalLM(config)
    n_iit = 2 * round(cfg.iit_rate * cfg.batch_size / 2)  # even: pairs are balanced Yes/No
    planted = PlantedMechanism(cfg, tokenizer) if n_iit else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    rng = random.Random(cfg.seed + 1)
    model.train()
    start, cpu_start = time.perf_counter(), time.process_time()
    for step in range(cfg.steps):
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss_sum, correct, iit_correct = 0.0, 0, 0
        for chunk in sample_batch(rng, cfg, step):  # gradient accumulation over chunks of similar length
            inputs, answers = encode_batch(tokenizer, chunk)
            logits = model(**inputs, logits_to_keep=1).logits[:, -1]  # only the answer position is trained
            loss = torch.nn.functional.cross_entropy(logits, answers, reduction="sum") / (cfg.batch_size + n_iit)
            loss.backward()
            loss_sum += loss.item()
            correct += (logits.argmax(-1) == answers).sum().item()
        if planted is not None:
            iit_loss, iit_correct = planted.loss_sum(model, rng, n_iit)
            iit_loss = iit_loss / (cfg.batch_size + n_iit)
            iit_loss.backward()
            loss_sum += iit_loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if log_every and (step + 1) % log_every == 0:
            iit = f"  IIT batch acc {iit_correct / n_iit:.3f}" if n_iit else ""
            print(f"step {step + 1}/{cfg.steps}  loss {loss_sum:.4f}  batch acc {correct / cfg.batch_size:.3f}{iit}  "
                  f"{time.perf_counter() - start:.0f}s", flush=True)
            if evaluate is not None:
                evaluate(model, tokenizer)
                model.train()
    model.eval()
    record = {"config": asdict(cfg), "train_seconds": round(time.perf_counter() - start, 1),
              "train_cpu_seconds": round(time.process_time() - cpu_start, 1)}
    return model, tokenizer, record


# ---------------------------------------------------------------------------------------------
# Measuring and shipping

TARGETS = {"yesno": 0.98, "truefalse": 0.95, "yesno_context": 0.95, "truefalse_context": 0.95}
EVAL_SEED = 12345  # fresh games and contexts: training draws from random.Random(seed + 1)
REGION_NAMES = {1: "below", 2: "inside", 3: "above"}


def eval_settings(seed: int = EVAL_SEED, n_contexts: int = 8) -> dict[str, tuple[str, list[str | None]]]:
    """The trained settings: name -> (instruction variant, contexts), contexts freshly drawn from the pool."""
    rng = random.Random(seed)
    contexts = [sample_context(rng) for _ in range(n_contexts)]
    return {
        "yesno": ("yesno", [None]),
        "truefalse": ("truefalse", [None]),
        "yesno_context": ("yesno", contexts),
        "truefalse_context": ("truefalse", contexts),
    }


def untrained_settings() -> dict[str, tuple[str, list[str | None]]]:
    """The paper's two irrelevant contexts, which training never saw (the robustness chapter uses them)."""
    return {"yesno_pricing_tag": ("yesno", [HELD_OUT_CONTEXTS[0]]), "yesno_frogs": ("yesno", [HELD_OUT_CONTEXTS[1]])}


def correct_by_game(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    template: str,
    games: Sequence[dict[str, int]],
    settings: dict[str, tuple[str, list[str | None]]],
) -> "pd.DataFrame":
    """One row per (setting, game): setting, region (below/inside/above) and whether the answer was right.

    In a setting with several contexts, game k gets context k mod their number.
    """
    import pandas as pd

    from das_lib.pricetag.task import PriceTagTask, model_answers

    rows = []
    for name, (variant, contexts) in settings.items():
        for k, context in enumerate(contexts):
            picked = games[k :: len(contexts)]
            if not picked:  # fewer games than contexts
                continue
            correct = model_answers(model, PriceTagTask(tokenizer, template, variant, context), picked)
            rows += [{"setting": name, "region": REGION_NAMES[pricetag.region_of(g)], "correct": bool(c)}
                     for g, c in zip(picked, correct.tolist())]
    return pd.DataFrame(rows)


def measure(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, n_games: int = 1000, seed: int = EVAL_SEED) -> dict[str, float]:
    """The stand-in's task accuracy on `n_games` fresh games in each trained setting."""
    rng = random.Random(seed)
    games = [pricetag.sample_game(rng) for _ in range(n_games)]
    table = correct_by_game(model, tokenizer, "standin", games, eval_settings(seed))
    return {name: round(float(acc), 4) for name, acc in table.groupby("setting", sort=False)["correct"].mean().items()}


PLANTED = "planted_subspace"  # file stem, in the model directory, of the subspace IIT planted


def planted_iia(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, planted: "DASIntervention", meta: dict,
                n_pairs: int = 1000, seed: int = EVAL_SEED) -> dict[str, float]:
    """IIA of swapping the planted subspace (at the site in `meta`) on fresh pairs of the planted causal
    model, and of doing nothing."""
    from das_lib.method.sites import Site, answer_logits
    from das_lib.pricetag.task import PriceTagTask
    from das_lib.method.training import PlainForward, evaluate

    site = Site(meta["site"]["layer"], meta["site"]["position"])
    pairs = pricetag.sample_pairs(meta["hypothesis"], n_pairs, seed)
    data = PriceTagTask(tokenizer, "standin").interchange_data(pairs, site.position)
    return {"planted": round(evaluate(PlainForward(model, site, planted), data), 4),
            "no_intervention": round(evaluate(lambda batch: answer_logits(model, batch.base), data), 4)}


def planted_meta(cfg: StandinConfig) -> dict:
    """What the planted subspace stands for: the causal model, its variables (in subspace order) and the site."""
    return {"hypothesis": "left_right", "variables": ["left", "right"],
            "site": {"layer": cfg.iit_layer, "position": cfg.iit_position}}


def load_planted(model_dir: Path | str = ASSET_DIR) -> tuple["DASIntervention", dict] | None:
    """The subspace IIT planted in the model at `model_dir` and its site, or None if it was trained plainly."""
    from das_lib.method.interventions import load_intervention

    path = Path(model_dir) / PLANTED
    if not path.with_suffix(".json").exists():
        return None
    return load_intervention(path)


def planted_for(model: str) -> tuple["DASIntervention", dict] | None:
    """The planted subspace of a model named as `load_model` names it (the stand-in, or a directory that
    `build` made with IIT), or None for any other model."""
    from das_lib.models.load import model_source

    folder, gguf = model_source(model)
    if gguf is not None or not Path(folder).is_dir():
        return None
    return load_planted(folder)


def save(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, record: dict, out_dir: Path | str) -> Path:
    """Write model, tokenizer (marked with its template) and the training record to `out_dir`."""
    from das_lib.models.load import TEMPLATE_KEY

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.init_kwargs[TEMPLATE_KEY] = "standin"  # so default_template knows how to prompt it
    tokenizer.model_max_length = model.config.max_position_embeddings
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / TRAINING_RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return out_dir


def load_record(model_dir: Path | str = ASSET_DIR) -> dict:
    """The training record shipped with the stand-in: config, seconds and measured accuracies."""
    path = Path(model_dir) / TRAINING_RECORD
    if not path.exists():
        raise FileNotFoundError(f"no training record at {path}; rebuild the stand-in with `python -m das_lib.models.standin`")
    return json.loads(path.read_text())


def build(cfg: StandinConfig, out_dir: Path | str, n_eval: int = 1000, log_every: int = 100) -> dict:
    """Train the stand-in from `cfg`, measure it on fresh games, and save it; returns the record."""
    from das_lib.method.interventions import save_intervention

    model, tokenizer, record = train(cfg, log_every)
    record["accuracy"] = measure(model, tokenizer, n_eval)
    record["n_eval"] = n_eval
    record["torch"] = torch.__version__
    planted = planted_subspace(cfg) if cfg.iit_rate > 0 else None
    if planted is not None:
        record["planted_iia"] = planted_iia(model, tokenizer, planted, planted_meta(cfg), n_eval)
    save(model, tokenizer, record, out_dir)
    if planted is not None:
        save_intervention(planted, Path(out_dir) / PLANTED, planted_meta(cfg))
    return record


def config_from_args(args: Sequence[str]) -> StandinConfig:
    """A StandinConfig from 'key=value' strings, e.g. ['steps=500', 'lr=0.001']."""
    defaults, changes = StandinConfig(), {}
    for arg in args:
        key, _, value = arg.partition("=")
        if not hasattr(defaults, key) or isinstance(getattr(defaults, key), dict) or not value:
            raise ValueError(f"cannot set {arg!r}: use key=value with a key among {list(asdict(defaults))} (not variant_mix)")
        changes[key] = type(getattr(defaults, key))(value)
    return StandinConfig(**changes)


if __name__ == "__main__":  # python -m das_lib.models.standin [OUT_DIR [key=value ...]]: rebuild the stand-in
    import sys

    out = sys.argv[1] if len(sys.argv) > 1 else ASSET_DIR
    result = build(config_from_args(sys.argv[2:]), out)
    print(json.dumps({k: result[k] for k in ("train_seconds", "train_cpu_seconds", "accuracy")}, indent=1))
