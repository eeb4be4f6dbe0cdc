"""`python -m das_lib.models.standin [OUT_DIR [key=value ...]]`: rebuild the stand-in (under 10 minutes on two cores);
exits with an error, saying why, unless it solves the game in every setting and a planted mechanism took (its
record, written either way, says both)."""
import json
import sys

from das_lib.models.load import STANDIN_DIR
from das_lib.models.game_training import config_from_args
from das_lib.models.standin.config import StandinConfig
from das_lib.models.standin.record import build, problems

out = sys.argv[1] if len(sys.argv) > 1 else STANDIN_DIR
result = build(config_from_args(sys.argv[2:], StandinConfig), out)
print(json.dumps({k: result[k] for k in ("train_seconds", "train_cpu_seconds", "accuracy", "planted_iia") if k in result}, indent=1))
if problems(result):
    sys.exit(f"the stand-in in {out} is no model with a known mechanism: " + "; ".join(problems(result))
             + " (train longer, e.g. steps=..., or plant elsewhere)")
