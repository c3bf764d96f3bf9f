-- The orchestrator's tables as fedsilo made them before schema revisions were recorded:
-- the statements create_all of src/fedsilo/orchestrator/_db.py at commit 5d89eda (the
-- parent of the commit that added checkpoints) sends to sqlite.

CREATE TABLE jobs (
	id VARCHAR(40) NOT NULL,
	name VARCHAR(64) NOT NULL,
	submitter VARCHAR(64) NOT NULL,
	spec_json TEXT NOT NULL,
	bundle_digest VARCHAR(64) NOT NULL,
	state VARCHAR(16) NOT NULL,
	current_round INTEGER NOT NULL,
	error TEXT,
	detail TEXT,
	model_digest VARCHAR(64),
	created_at FLOAT NOT NULL,
	started_at FLOAT,
	finished_at FLOAT,
	PRIMARY KEY (id)
);

CREATE INDEX ix_jobs_state ON jobs (state);

CREATE TABLE blobs (
	digest VARCHAR(64) NOT NULL,
	size BIGINT NOT NULL,
	owner VARCHAR(64) NOT NULL,
	created_at FLOAT NOT NULL,
	PRIMARY KEY (digest)
);

CREATE TABLE tasks (
	id VARCHAR(40) NOT NULL,
	job_id VARCHAR(40),
	silo VARCHAR(64) NOT NULL,
	kind VARCHAR(16) NOT NULL,
	round INTEGER NOT NULL,
	state VARCHAR(16) NOT NULL,
	message_json TEXT NOT NULL,
	result_json TEXT,
	created_at FLOAT NOT NULL,
	assigned_at FLOAT,
	finished_at FLOAT,
	PRIMARY KEY (id),
	FOREIGN KEY(job_id) REFERENCES jobs (id)
);

CREATE INDEX ix_tasks_job_id ON tasks (job_id);

CREATE INDEX ix_tasks_silo ON tasks (silo);

CREATE INDEX ix_tasks_state ON tasks (state);

CREATE TABLE rounds (
	job_id VARCHAR(40) NOT NULL,
	round INTEGER NOT NULL,
	global_digest VARCHAR(64),
	started_at FLOAT NOT NULL,
	finished_at FLOAT,
	PRIMARY KEY (job_id, round),
	FOREIGN KEY(job_id) REFERENCES jobs (id)
);

CREATE TABLE metrics (
	job_id VARCHAR(40) NOT NULL,
	round INTEGER NOT NULL,
	silo VARCHAR(64) NOT NULL,
	phase VARCHAR(16) NOT NULL,
	metrics_json TEXT NOT NULL,
	PRIMARY KEY (job_id, round, silo, phase),
	FOREIGN KEY(job_id) REFERENCES jobs (id)
);

CREATE TABLE round_notes (
	id INTEGER NOT NULL,
	job_id VARCHAR(40) NOT NULL,
	round INTEGER NOT NULL,
	silo VARCHAR(64) NOT NULL,
	kind VARCHAR(16) NOT NULL,
	text TEXT NOT NULL,
	created_at FLOAT NOT NULL,
	PRIMARY KEY (id),
	FOREIGN KEY(job_id) REFERENCES jobs (id)
);

CREATE INDEX ix_round_notes_job_id ON round_notes (job_id);
