"""The stage functions train.py wires (baselines, retrieval, ranking, distill, export): orchestration, kept out of the model packages."""
