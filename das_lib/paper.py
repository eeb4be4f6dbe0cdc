"""Every number das_lib quotes from the paper, with its source; it imports nothing, so every layer may read it.

Source of all of them unless a line says otherwise: Wu, Geiger, Icard, Potts and Goodman,
"Interpretability at Scale: Identifying Causal Mechanisms in Alpaca", NeurIPS 2023 (arXiv:2305.08809),
and its released analysis, as gathered in shared/reference/paper-notes.md ("Results to compare against").
"""

SOURCE = "Wu et al. 2023 (arXiv:2305.08809), Alpaca 7B, release analysis"

# The release's starting temperature of the boundary mask, for LLaMA 7B's 4096 rotated dimensions.
TEMPERATURE, WIDTH = 50.0, 4096

# Max IIA over the grid (7 layers x 13 positions, best of 3 seeds) of Alpaca 7B, per hypothesis.
MAX_IIA = {"left": 0.90, "left_right": 0.86, "midpoint": 0.70, "bracket": 0.72}

# Robustness (Alpaca 7B): max IIA over the grid, Pearson r of the setting's grid with the grid it was
# trained on, variance of IIA over the grid x 100, for the rows of the two hypotheses whose alignments
# are reused (MAX_IIA holds every hypothesis's max IIA).
ROBUSTNESS_COLUMNS = ("max IIA", "r", "variance x100")
ROBUSTNESS: dict[str, tuple[float, float, float]] = {
    "Left Boundary": (0.90, 1.00, 2.01),
    "Left and Right Boundary": (0.86, 1.00, 1.14),
    "correct-only inputs": (0.88, 0.99, 1.47),
    "incorrect-only inputs": (0.71, 0.84, 0.36),
    "fixed bracket 5.49-8.49 (seen)": (0.94, 0.97, 3.02),
    "fixed bracket 2.51-5.51 (unseen)": (0.95, 0.94, 1.66),
    'irrelevant context "Pricing tag game!"': (0.83, 0.97, 0.94),
    'irrelevant context "Fruitarian Frogs May Be Doing Flowers a Favor"': (0.85, 0.98, 1.04),
    'sibling instruction "say True ... otherwise False"': (0.83, 0.87, 0.93),
}
# The time of one Left Boundary alignment in the pyvene tutorial (3 epochs of 20,000 pairs, one GPU), in
# minutes; source: the pyvene tutorial, as gathered in the paper notes.
PYVENE_MINUTES = 23

# The Alpaca prompt as the release's code tokenizes it with LLaMA's tokenizer: it asserts 82 tokens for
# every prompt, and the grid searches its last 13 tokens. Source: the release's price_tagging_game.py (as
# copied into pyvene's tutorial_price_tagging_utils.py), as gathered in the paper notes.
PROMPT_TOKENS, POSITIONS = 82, 13

# The fixed brackets and the irrelevant contexts of the robustness rows.
BRACKETS = {"seen": "5.49-8.49", "unseen": "2.51-5.51"}
CONTEXTS = ("Pricing tag game!", "Fruitarian Frogs May Be Doing Flowers a Favor")
