"""Records: the prediction audit log, API clients and clinician feedback.

models.py   the tables (SQLAlchemy 2.0, typed)
session.py  engine and session factory from a URL (SQLite embedded, PostgreSQL production)
chain.py    the hash chain over predictions and the serialised append
rows.py     PredictionRecord -> row dict, and the JSON form used by the spool
spool.py    the local fsync'd JSONL spool used while the database is unreachable
writer.py   DurableWriter: queue -> batches -> database or spool, replay when the database is back
audit.py    verify the chain, report the first broken link
"""
