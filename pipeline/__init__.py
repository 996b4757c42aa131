"""The served pipeline (retrieve -> rank -> rules), its settings, a run's artifacts and the batch command."""
