"""Fast certified training (Shi et al. 2021, "Fast Certified Robust Training with Short Warmup"): IBP
initialisation (:mod:`.ibp_init`) and the warm-up regularisers on the intermediate bounds (:mod:`.regularizers`).
Plain torch; usable from any training loop."""
