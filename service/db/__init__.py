"""Records: the prediction audit log, API clients, clinician feedback and the read log.

tables.py   the tables (SQLAlchemy 2.0, typed)
session.py  engine and session factory from a URL (SQLite embedded, PostgreSQL production)
migrate.py  Alembic upgrade/downgrade under an exclusive lock
chain.py    the hash chain over predictions and the serialised append
anchor.py   signed checkpoints of the chain's newest links, kept outside the database
rows.py     row values -> normalised row dict, its canonical bytes, and the spool's JSON form
spool.py    the local fsync'd JSONL spool used while the database is unreachable, and its replay claims
spool_files.py  how spool files are created (locked before they are named), written and told apart
quarantine.py   spool lines and files replay cannot insert, set aside and kept
backlog.py  the spool backlog as a count kept up to date
journal.py  the spool-first writer's fsync'd journal segments
record_queue.py  a writer's bounded queue of record() requests, taken in batches, stop's marker private
store.py    RecordStore: insert into the database, else spool; replay the spool (and a journal's
            segments left for replay) once the database is back; the backlog count
writer.py   DurableWriter: queue -> batches -> store (database or spool); answers once committed
spool_first.py  SpoolFirstWriter: queue -> journal, answers once journaled; an insert task follows
            (both writers are made of the queue, the store and the supervisor: no inheritance)
supervisor.py   restarts a writer's task after a failure; readiness reports it down meanwhile
observer.py what the writers report (WriterObserver), and as Prometheus metrics
audit.py    verify the chain and its checkpoints, report the first broken link
queries.py  what the query API reads and writes (each read logged)
roles.py    could the connected role rewrite the records?
components.py  the records side of the app, built in one place
"""
