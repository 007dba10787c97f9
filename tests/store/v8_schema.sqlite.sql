-- MoL Studio's schema version 8 on sqlite, as store/db.py at 8fa4a8c created it (create_all's DDL),
-- the last database shape before Alembic (tests/store/test_migrations.py; its rows: v8_rows.sql).
CREATE TABLE api_tokens (
	token_hash VARCHAR(64) NOT NULL,
	owner VARCHAR(200) NOT NULL,
	created_at DATETIME NOT NULL,
	PRIMARY KEY (token_hash)
);
CREATE INDEX ix_api_tokens_owner ON api_tokens (owner);
CREATE TABLE datasets (
	id VARCHAR(40) NOT NULL,
	owner VARCHAR(200) NOT NULL,
	purpose VARCHAR(20) NOT NULL,
	filename VARCHAR(255) NOT NULL,
	path TEXT NOT NULL,
	bytes BIGINT NOT NULL,
	documents INTEGER NOT NULL,
	approx_tokens BIGINT NOT NULL,
	sha256 VARCHAR(64) NOT NULL,
	created_at DATETIME NOT NULL,
	PRIMARY KEY (id)
);
CREATE INDEX ix_datasets_owner ON datasets (owner);
CREATE TABLE jobs (
	id VARCHAR(40) NOT NULL,
	owner VARCHAR(200) NOT NULL,
	name VARCHAR(200) NOT NULL,
	spec JSON NOT NULL,
	status VARCHAR(20) NOT NULL,
	step INTEGER NOT NULL,
	max_steps INTEGER NOT NULL,
	error TEXT,
	stop_reason VARCHAR(40),
	last_metrics JSON NOT NULL,
	cancel_requested BOOLEAN NOT NULL,
	attempt INTEGER NOT NULL,
	lease_owner VARCHAR(200),
	heartbeat_at DATETIME,
	created_at DATETIME NOT NULL,
	started_at DATETIME,
	finished_at DATETIME,
	queued_at DATETIME NOT NULL,
	sweep_id VARCHAR(40),
	PRIMARY KEY (id)
);
CREATE INDEX ix_jobs_owner ON jobs (owner);
CREATE INDEX ix_jobs_owner_created_id ON jobs (owner, created_at, id);
CREATE INDEX ix_jobs_status ON jobs (status);
CREATE INDEX ix_jobs_sweep_id ON jobs (sweep_id);
CREATE TABLE schema_version (
	version INTEGER NOT NULL,
	PRIMARY KEY (version)
);
CREATE TABLE sweeps (
	id VARCHAR(40) NOT NULL,
	owner VARCHAR(200) NOT NULL,
	name VARCHAR(200) NOT NULL,
	base_spec JSON NOT NULL,
	grid JSON NOT NULL,
	created_at DATETIME NOT NULL,
	PRIMARY KEY (id)
);
CREATE INDEX ix_sweeps_owner ON sweeps (owner);
CREATE TABLE uploads (
	id VARCHAR(40) NOT NULL,
	owner VARCHAR(200) NOT NULL,
	purpose VARCHAR(20) NOT NULL,
	filename VARCHAR(255) NOT NULL,
	mime_type VARCHAR(200),
	bytes BIGINT NOT NULL,
	status VARCHAR(20) NOT NULL,
	dataset_id VARCHAR(40),
	created_at DATETIME NOT NULL,
	expires_at DATETIME NOT NULL,
	PRIMARY KEY (id)
);
CREATE INDEX ix_uploads_expires_at ON uploads (expires_at);
CREATE INDEX ix_uploads_owner ON uploads (owner);
CREATE TABLE webhook_endpoints (
	id VARCHAR(40) NOT NULL,
	owner VARCHAR(200) NOT NULL,
	url TEXT NOT NULL,
	events JSON NOT NULL,
	secret VARCHAR(100) NOT NULL,
	created_at DATETIME NOT NULL,
	PRIMARY KEY (id)
);
CREATE INDEX ix_webhook_endpoints_owner ON webhook_endpoints (owner);
CREATE TABLE workers_seen (
	name VARCHAR(200) NOT NULL,
	last_seen DATETIME NOT NULL,
	capacity INTEGER NOT NULL,
	device VARCHAR(200),
	job_id VARCHAR(40),
	PRIMARY KEY (name)
);
CREATE TABLE idempotency_keys (
	owner VARCHAR(200) NOT NULL,
	"key" VARCHAR(255) NOT NULL,
	request_sha256 VARCHAR(64) NOT NULL,
	job_id VARCHAR(40) NOT NULL,
	created_at DATETIME NOT NULL,
	PRIMARY KEY (owner, "key"),
	FOREIGN KEY(job_id) REFERENCES jobs (id) ON DELETE CASCADE
);
CREATE INDEX ix_idempotency_keys_created_at ON idempotency_keys (created_at);
CREATE TABLE job_events (
	seq INTEGER NOT NULL,
	job_id VARCHAR(40) NOT NULL,
	step INTEGER NOT NULL,
	kind VARCHAR(40) NOT NULL,
	message TEXT NOT NULL,
	data JSON NOT NULL,
	created_at DATETIME NOT NULL,
	PRIMARY KEY (seq),
	FOREIGN KEY(job_id) REFERENCES jobs (id) ON DELETE CASCADE
);
CREATE INDEX ix_job_events_job_seq ON job_events (job_id, seq);
CREATE TABLE metric_points (
	seq INTEGER NOT NULL,
	job_id VARCHAR(40) NOT NULL,
	step INTEGER NOT NULL,
	"values" JSON NOT NULL,
	PRIMARY KEY (seq),
	FOREIGN KEY(job_id) REFERENCES jobs (id) ON DELETE CASCADE
);
CREATE INDEX ix_metric_points_job_seq ON metric_points (job_id, seq);
CREATE TABLE side_tasks (
	id VARCHAR(40) NOT NULL,
	owner VARCHAR(200) NOT NULL,
	job_id VARCHAR(40) NOT NULL,
	kind VARCHAR(40) NOT NULL,
	request_sha256 VARCHAR(64) NOT NULL,
	status VARCHAR(20) NOT NULL,
	created_at DATETIME NOT NULL,
	finished_at DATETIME,
	PRIMARY KEY (id),
	FOREIGN KEY(job_id) REFERENCES jobs (id) ON DELETE CASCADE
);
CREATE INDEX ix_side_tasks_job_request ON side_tasks (job_id, request_sha256);
CREATE INDEX ix_side_tasks_owner_status ON side_tasks (owner, status);
CREATE TABLE upload_parts (
	upload_id VARCHAR(40) NOT NULL,
	part_index INTEGER NOT NULL,
	bytes BIGINT NOT NULL,
	sha256 VARCHAR(64) NOT NULL,
	file VARCHAR(100) NOT NULL,
	PRIMARY KEY (upload_id, part_index),
	FOREIGN KEY(upload_id) REFERENCES uploads (id) ON DELETE CASCADE
);
CREATE TABLE webhook_deliveries (
	id VARCHAR(40) NOT NULL,
	endpoint_id VARCHAR(40) NOT NULL,
	job_id VARCHAR(40),
	event_type VARCHAR(40) NOT NULL,
	payload JSON NOT NULL,
	status VARCHAR(20) NOT NULL,
	attempts INTEGER NOT NULL,
	attempts_log JSON NOT NULL,
	next_attempt_at DATETIME NOT NULL,
	created_at DATETIME NOT NULL,
	PRIMARY KEY (id),
	FOREIGN KEY(endpoint_id) REFERENCES webhook_endpoints (id) ON DELETE CASCADE
);
CREATE INDEX ix_webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX ix_webhook_deliveries_endpoint_created ON webhook_deliveries (endpoint_id, created_at);
