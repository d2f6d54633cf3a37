"""The paper and its bounds: certified margins through auto_LiRPA, the re-weighted loss (eq. 6-8) and per-example
auto-tuned eps (Algorithm 1). Plain torch and auto_LiRPA: no Hydra, nothing written to disk (docs/design.md)."""
