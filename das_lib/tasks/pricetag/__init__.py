"""The price-tagging game: games and hypotheses (game), tables of games and pairs (tables), prompts and token
roles (task), programs over the game's quantities (programs). Imports method only."""
