"""Hydra config groups of the recommender (a package so an installed wheel carries them: Hydra finds
``pkg://configs`` through this file)."""
