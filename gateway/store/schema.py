"""SQLite schema migrations, in order. Version N is the state after applying MIGRATIONS[:N].

PostgreSQL keeps its own list (`gateway.store.postgres_schema.MIGRATIONS`: native types, JSONB, collations) with
the same numbering: version N means the same tables and columns in both backends.
"""

from __future__ import annotations

MIGRATIONS: list[list[str]] = [
    # 1: captured exchanges and gateway keys
    [
        """CREATE TABLE exchanges (
            request_id TEXT PRIMARY KEY,
            created_at DOUBLE PRECISION NOT NULL,
            task TEXT NOT NULL,
            task_source TEXT NOT NULL,
            route TEXT NOT NULL,
            model TEXT NOT NULL,
            upstream_model TEXT NOT NULL,
            user_id TEXT,
            status TEXT NOT NULL,
            http_status INTEGER NOT NULL,
            stream INTEGER NOT NULL,
            request_json TEXT NOT NULL,
            response_json TEXT,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            latency_ms DOUBLE PRECISION,
            cost_usd DOUBLE PRECISION,
            finish_reason TEXT,
            error TEXT,
            system_hash TEXT,
            extra_json TEXT
        )""",
        "CREATE INDEX exchanges_task_created ON exchanges (task, created_at)",
        "CREATE INDEX exchanges_status ON exchanges (status)",
        """CREATE TABLE api_keys (
            key_id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            key_hash TEXT NOT NULL UNIQUE,
            created_at DOUBLE PRECISION NOT NULL,
            revoked INTEGER NOT NULL DEFAULT 0
        )""",
    ],
    # 2: student versions (the registry) and per-task routing settings
    [
        """CREATE TABLE students (
            task TEXT NOT NULL,
            version INTEGER NOT NULL,
            status TEXT NOT NULL,
            model TEXT NOT NULL,
            base_model TEXT,
            trainer TEXT,
            artifact TEXT,
            dataset_hash TEXT,
            system_prompt_hash TEXT,
            prompt_distilled INTEGER NOT NULL DEFAULT 0,
            threshold DOUBLE PRECISION,
            confidence_method TEXT NOT NULL DEFAULT 'mean_logprob',
            details_json TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (task, version)
        )""",
        "CREATE INDEX students_status ON students (status)",
        """CREATE TABLE task_routing (
            task TEXT PRIMARY KEY,
            rollout_percent DOUBLE PRECISION NOT NULL DEFAULT 0,
            updated_at DOUBLE PRECISION NOT NULL
        )""",
    ],
    # 3: retention deletes and store-to-store copies read exchanges by time alone
    [
        "CREATE INDEX exchanges_created ON exchanges (created_at, request_id)",
    ],
    # 4: forgetting a user: the hashes of forgotten users (never the ids), which curation keeps out of datasets,
    # and an index to delete a user's exchanges by; partial, since most traffic may carry no user at all
    [
        """CREATE TABLE forgotten_users (
            user_hash TEXT PRIMARY KEY,
            forgotten_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX exchanges_user ON exchanges (user_id) WHERE user_id IS NOT NULL",
    ],
    # 5: console sign-ins: the sha256 of each random session id (never the id), with its expiry, so every
    # replica and worker knows a session and a sign-out ends it everywhere
    [
        """CREATE TABLE console_sessions (
            session_hash TEXT PRIMARY KEY,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        )""",
    ],
    # 6: Responses API responses kept for previous_response_id and GET /v1/responses/{id}: the response as
    # returned, its input items and the conversation so far (chat messages); user_id for forget, task and
    # created_at for retention
    [
        """CREATE TABLE responses (
            response_id TEXT PRIMARY KEY,
            created_at DOUBLE PRECISION NOT NULL,
            task TEXT NOT NULL,
            client TEXT,
            user_id TEXT,
            response_json TEXT NOT NULL,
            input_items_json TEXT NOT NULL,
            history_json TEXT NOT NULL
        )""",
        "CREATE INDEX responses_created ON responses (created_at)",
        "CREATE INDEX responses_user ON responses (user_id) WHERE user_id IS NOT NULL",
    ],
    # 7: feedback from the app on captured exchanges (rating, labels, comment, a corrected answer), one row per
    # request (the newest wins); the exchange's task, user and time are copied for reports, forget and retention
    [
        """CREATE TABLE feedback (
            request_id TEXT PRIMARY KEY,
            task TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            exchange_created_at DOUBLE PRECISION NOT NULL,
            source TEXT NOT NULL,
            user_id TEXT,
            rating DOUBLE PRECISION,
            labels_json TEXT,
            comment TEXT,
            correction_json TEXT
        )""",
        "CREATE INDEX feedback_task ON feedback (task, created_at)",
        "CREATE INDEX feedback_exchange_created ON feedback (exchange_created_at)",
        "CREATE INDEX feedback_user ON feedback (user_id) WHERE user_id IS NOT NULL",
    ],
    # 8: rollout ramps (`gateway.ramp`): one row per task, its newest ramp; replicas move it by compare-and-set
    [
        """CREATE TABLE rollout_ramps (
            task TEXT PRIMARY KEY,
            ramp_id TEXT NOT NULL,
            version INTEGER NOT NULL,
            state TEXT NOT NULL,
            step INTEGER NOT NULL,
            started_at DOUBLE PRECISION NOT NULL,
            step_started_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
            previous_version INTEGER,
            previous_percent DOUBLE PRECISION NOT NULL,
            plan_json TEXT NOT NULL,
            history_json TEXT NOT NULL
        )""",
    ],
]

LATEST_VERSION = len(MIGRATIONS)
