"""The price-tagging game: games and hypotheses (game), prompts and token roles (task). Imports method only."""
