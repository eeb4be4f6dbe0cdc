"""`python -m das_lib.models.standin [OUT_DIR [key=value ...]]`: rebuild the stand-in (under 10 minutes on two cores);
exits with an error when a planted mechanism did not take."""
import json
import sys

from das_lib.models.load import STANDIN_DIR
from das_lib.models.game_training import config_from_args
from das_lib.models.standin.config import StandinConfig
from das_lib.models.standin.record import build

out = sys.argv[1] if len(sys.argv) > 1 else STANDIN_DIR
result = build(config_from_args(sys.argv[2:], StandinConfig), out)
print(json.dumps({k: result[k] for k in ("train_seconds", "train_cpu_seconds", "accuracy", "planted_iia") if k in result}, indent=1))
if "planted_iia" in result and not result["planted_iia"]["took"]:
    sys.exit("the plant did not take: swapping the planted subspace does no better than doing nothing (see planted_iia)")
