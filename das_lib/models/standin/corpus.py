"""The irrelevant-context pool of the stand-in's training data (none of it is a context the robustness study tests)."""
from __future__ import annotations

import random

from das_lib import paper

## Irrelevant contexts: sentences on many topics, recombined into headlines, word salads and
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
    if text in paper.CONTEXTS:  # never train on the contexts the robustness study tests
        return sample_context(rng)
    return text

