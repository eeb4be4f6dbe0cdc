"""The method, independent of any task: causal models, counterfactual pairs, sites, interventions, training."""
