"""HTTP routers: classify, predictions, manifests (GET /models), health, scrape (GET /metrics), page,
and the Open Inference Protocol v2 (inference_protocol)."""
