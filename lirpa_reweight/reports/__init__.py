"""Reading finished runs (:mod:`.runs`) into the paper's tables (:mod:`.table`, :mod:`.optuna`) and figures
(:mod:`.figures`). Plain Python and YAML but for the margins figure, so ``summarize`` and ``plot`` start fast."""
