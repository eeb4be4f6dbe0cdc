"""das_lib: causal models, interchange interventions, DAS and Boundless DAS for Hugging Face LMs."""

__version__ = "0.1.0"
