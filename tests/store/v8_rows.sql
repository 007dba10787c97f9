-- The rows a release before Alembic (schema version 8) left behind, for v8_schema.<dialect>.sql.
INSERT INTO schema_version (version) VALUES (8);
INSERT INTO datasets (id, owner, purpose, filename, path, bytes, documents, approx_tokens, sha256, created_at) VALUES ('ds_v8', 'alice', 'domain', 'corpus.jsonl', '/data/ds_v8.jsonl', 6000000000, 12, 4000000000, '0000000000000000000000000000000000000000000000000000000000000000', '2026-01-01 00:00:00');
INSERT INTO jobs (id, owner, name, spec, status, step, max_steps, last_metrics, cancel_requested, attempt, created_at, queued_at) VALUES ('job_v8', 'alice', 'before alembic', '{"base_model": "tiny", "method": "mol"}', 'succeeded', 3, 3, '{"loss": 1.5}', false, 1, '2026-01-01 00:00:00', '2026-01-01 00:00:00');
INSERT INTO metric_points (job_id, step, "values") VALUES ('job_v8', 3, '{"loss": 1.5}');
