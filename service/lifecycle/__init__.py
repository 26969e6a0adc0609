"""The model lifecycle (docs/LIFECYCLE.md): a candidate student shadowing live traffic, its agreement
with the serving one, promotion and rollback as chained events, every worker switching at a batch
boundary."""
