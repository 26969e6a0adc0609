"""HTTP routers: classify, models, health, metrics."""
