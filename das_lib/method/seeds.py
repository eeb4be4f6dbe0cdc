"""Which seed draws which examples: every derived seed in one place, so that two draws share no pairs by accident."""
from __future__ import annotations

# Settings of the robustness study draw from seed + SETTING_OFFSET: a sweep draws its training and test
# pairs from split_seeds(data_seed, 2), and the same seed would give largely the same pairs, so an
# alignment would be evaluated on pairs it was trained on.
SETTING_OFFSET = 1_000_003
SCREENING_STRIDE = 7919  # rounds of screening pairs never reuse the setting's seed, nor each other's
GAMES_OFFSET = 104_729  # a setting's games (its task accuracy) are not the games of its pairs, nor another seed's


def split_seeds(seed: int, parts: int) -> list[int]:
    """Seeds of `parts` disjoint draws (train, test, ...) made from one seed: parts * seed + i."""
    return [parts * seed + i for i in range(parts)]


def setting_seed(seed: int) -> int:
    """The seed a robustness setting draws its pairs from."""
    return seed + SETTING_OFFSET


def setting_games_seed(seed: int) -> int:
    """The seed a robustness setting draws the games of its task accuracy from (not its pairs' seed)."""
    return setting_seed(seed) + GAMES_OFFSET


def screening_seed(seed: int, round_: int) -> int:
    """The seed of screening round `round_` (0, 1, ...) of a setting drawn from `seed`."""
    return seed + SCREENING_STRIDE * (round_ + 1)
