-- The schema that dicomnode made (Base.metadata.create_all on SQLite) before it used
-- migrations, as read from sqlite_master at commit 48fcad3: such a database has no
-- alembic_version table. tests/unit/db/revision_rows.py builds pre-migration databases from it.

CREATE TABLE studies (
	id INTEGER NOT NULL,
	study_instance_uid VARCHAR(64) NOT NULL,
	patient_id VARCHAR(64),
	accession_number VARCHAR(16),
	created_at DATETIME NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (study_instance_uid)
);

CREATE TABLE discarded_classes (
	sop_class_uid VARCHAR(64) NOT NULL,
	count INTEGER NOT NULL,
	last_at DATETIME NOT NULL,
	PRIMARY KEY (sop_class_uid)
);

CREATE TABLE receive_errors (
	id INTEGER NOT NULL,
	at DATETIME NOT NULL,
	calling_ae_title VARCHAR(16) NOT NULL,
	peer_address VARCHAR(64) NOT NULL,
	sop_instance_uid TEXT NOT NULL,
	status INTEGER NOT NULL,
	reason TEXT NOT NULL,
	PRIMARY KEY (id)
);

CREATE INDEX ix_receive_errors_at ON receive_errors (at);

CREATE TABLE association_events (
	id INTEGER NOT NULL,
	at DATETIME NOT NULL,
	calling_ae_title VARCHAR(16) NOT NULL,
	called_ae_title VARCHAR(16) NOT NULL,
	peer_address VARCHAR(64) NOT NULL,
	outcome VARCHAR(32) NOT NULL,
	reason TEXT NOT NULL,
	PRIMARY KEY (id)
);

CREATE INDEX ix_association_events_at ON association_events (at);

CREATE TABLE series (
	id INTEGER NOT NULL,
	series_instance_uid VARCHAR(64) NOT NULL,
	study_id INTEGER NOT NULL,
	state VARCHAR(16) NOT NULL,
	reason TEXT NOT NULL,
	version INTEGER NOT NULL,
	instance_count INTEGER NOT NULL,
	attributes JSON NOT NULL,
	geometry JSON NOT NULL,
	first_received_at DATETIME NOT NULL,
	last_received_at DATETIME NOT NULL,
	completed_at DATETIME,
	updated_at DATETIME NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (series_instance_uid),
	FOREIGN KEY(study_id) REFERENCES studies (id)
);

CREATE INDEX ix_series_study_id ON series (study_id);

CREATE INDEX ix_series_last_received_at ON series (last_received_at);

CREATE INDEX ix_series_state ON series (state);

CREATE TABLE instances (
	id INTEGER NOT NULL,
	sop_instance_uid VARCHAR(64) NOT NULL,
	series_id INTEGER NOT NULL,
	sop_class_uid VARCHAR(64) NOT NULL,
	transfer_syntax_uid VARCHAR(64) NOT NULL,
	path TEXT NOT NULL,
	size_bytes INTEGER NOT NULL,
	sha256 VARCHAR(64) NOT NULL,
	instance_number INTEGER,
	geometry JSON NOT NULL,
	received_at DATETIME NOT NULL,
	series_version INTEGER NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (sop_instance_uid),
	FOREIGN KEY(series_id) REFERENCES series (id)
);

CREATE INDEX ix_instances_series_id ON instances (series_id);

CREATE TABLE jobs (
	id INTEGER NOT NULL,
	series_id INTEGER NOT NULL,
	version INTEGER NOT NULL,
	state VARCHAR(16) NOT NULL,
	attempts INTEGER NOT NULL,
	worker VARCHAR(128),
	error TEXT NOT NULL,
	timings_s JSON NOT NULL,
	outputs JSON NOT NULL,
	created_at DATETIME NOT NULL,
	claimed_at DATETIME,
	finished_at DATETIME,
	PRIMARY KEY (id),
	UNIQUE (series_id, version),
	FOREIGN KEY(series_id) REFERENCES series (id)
);

CREATE INDEX ix_jobs_series_id ON jobs (series_id);

CREATE INDEX ix_jobs_state ON jobs (state);

CREATE TABLE outbox (
	id INTEGER NOT NULL,
	job_id INTEGER NOT NULL,
	kind VARCHAR(16) NOT NULL,
	destination VARCHAR(64) NOT NULL,
	path TEXT NOT NULL,
	sop_class_uid VARCHAR(64) NOT NULL,
	sop_instance_uid VARCHAR(64) NOT NULL,
	state VARCHAR(16) NOT NULL,
	attempts INTEGER NOT NULL,
	next_attempt_at DATETIME NOT NULL,
	last_error TEXT NOT NULL,
	created_at DATETIME NOT NULL,
	sent_at DATETIME,
	PRIMARY KEY (id),
	UNIQUE (sop_instance_uid, destination),
	FOREIGN KEY(job_id) REFERENCES jobs (id)
);

CREATE INDEX ix_outbox_state ON outbox (state);

CREATE INDEX ix_outbox_job_id ON outbox (job_id);

CREATE INDEX ix_outbox_next_attempt_at ON outbox (next_attempt_at);
