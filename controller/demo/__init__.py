"""The one-machine demo: a synthetic world with known ground truth, a small real recommender trained on it,
a model service exporting the metrics the Prometheus rules expect, a local rollout over the service's two
tracks, and a local training "pipeline" that reports back like the CI pipeline does."""
