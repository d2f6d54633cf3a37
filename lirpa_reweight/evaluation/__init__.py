"""Evaluation of a trained classifier: clean, attack and verified error on a test set (:mod:`.robustness`)."""
