"""The stand-in for Alpaca 7B: a small Llama model trained from scratch on the price-tagging game.

Read in this order: corpus (the irrelevant-context pool), tokenizer, config, train (the data mix and
the loop), planted (the mechanism interchange intervention training plants, and reading it back) and
record (measuring it, and the directory shipped as das_lib/assets/standin). `python -m
das_lib.models.standin` rebuilds that directory. The names below are the stand-in's public face.
"""
from das_lib.models.load import STANDIN_DIR, STANDIN_PRODUCT_DIR
from das_lib.models.standin.config import StandinConfig, model_config
from das_lib.models.standin.corpus import SENTENCES, sample_context
from das_lib.models.standin.planted import (
    EVAL_SEED, PLANTED, PlantedMechanism, load_planted, plantable, planted_for, planted_iia, planted_meta, planted_program,
    planted_subspace,
)
from das_lib.models.standin.record import (
    REGION_NAMES, SOLVES, TARGETS, TRAINING_RECORD, accuracy_by_setting, accuracy_frame, accuracy_table, build,
    correct_by_game, correct_by_name, eval_settings, headline_accuracy, load_record, measure, record_table, record_values,
    problems, retrain_comparison, save, training_mix, untrained_settings,
)
from das_lib.models.standin.tokenizer import build_tokenizer, tokenizer_corpus
from das_lib.models.standin.train import encode_batch, sample_batch, sample_example, train
