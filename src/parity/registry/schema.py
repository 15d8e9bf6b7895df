"""The registry's tables (one migration list; where the dialects differ -- the triggers that keep
the audit log append-only -- a migration is a {dialect: sql} pair with the same meaning)."""

from __future__ import annotations

COMPONENT = "registry"

MIGRATIONS: list[str | dict[str, str]] = [
    """CREATE TABLE registry_models (
        id {id},
        name TEXT NOT NULL UNIQUE,
        created_at TEXT NOT NULL,
        created_by TEXT NOT NULL
    );
    CREATE TABLE registry_versions (
        id {id},
        model_id {bigint} NOT NULL REFERENCES registry_models (id),
        version INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        created_by TEXT NOT NULL,
        description TEXT NOT NULL,
        signature TEXT NOT NULL,
        profile TEXT,
        lineage TEXT NOT NULL,
        tags TEXT NOT NULL,
        run_id TEXT,
        UNIQUE (model_id, version)
    );
    CREATE INDEX registry_versions_by_run ON registry_versions (run_id);
    CREATE TABLE registry_artifacts (
        version_id {bigint} NOT NULL REFERENCES registry_versions (id),
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size {bigint} NOT NULL,
        PRIMARY KEY (version_id, name)
    );
    CREATE TABLE registry_metrics (
        version_id {bigint} NOT NULL REFERENCES registry_versions (id),
        name TEXT NOT NULL,
        value {float} NOT NULL,
        PRIMARY KEY (version_id, name)
    );
    CREATE TABLE registry_aliases (
        model_id {bigint} NOT NULL REFERENCES registry_models (id),
        alias TEXT NOT NULL,
        version_id {bigint} NOT NULL REFERENCES registry_versions (id),
        updated_at TEXT NOT NULL,
        updated_by TEXT NOT NULL,
        PRIMARY KEY (model_id, alias)
    );
    CREATE TABLE registry_audit (
        id {id},
        seq {bigint} NOT NULL UNIQUE,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        model TEXT,
        version INTEGER,
        alias TEXT,
        reason TEXT NOT NULL,
        evidence TEXT NOT NULL,
        details TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE
    );
    CREATE INDEX registry_audit_by_model ON registry_audit (model, seq);""",
    {
        # versions, their artifacts and metrics, and the audit log never change once written
        "sqlite": """CREATE TRIGGER registry_audit_no_update BEFORE UPDATE ON registry_audit BEGIN SELECT RAISE(ABORT, 'registry_audit is append-only: UPDATE refused'); END;
            CREATE TRIGGER registry_audit_no_delete BEFORE DELETE ON registry_audit BEGIN SELECT RAISE(ABORT, 'registry_audit is append-only: DELETE refused'); END;
            CREATE TRIGGER registry_versions_no_update BEFORE UPDATE ON registry_versions BEGIN SELECT RAISE(ABORT, 'registry_versions are immutable: UPDATE refused'); END;
            CREATE TRIGGER registry_artifacts_no_update BEFORE UPDATE ON registry_artifacts BEGIN SELECT RAISE(ABORT, 'registry_artifacts are immutable: UPDATE refused'); END;
            CREATE TRIGGER registry_metrics_no_update BEFORE UPDATE ON registry_metrics BEGIN SELECT RAISE(ABORT, 'registry_metrics are immutable: UPDATE refused'); END;""",
        "postgresql": """CREATE FUNCTION registry_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION '% is append-only (immutable): % refused', TG_TABLE_NAME, TG_OP; END $$;
            CREATE TRIGGER registry_audit_no_change BEFORE UPDATE OR DELETE ON registry_audit FOR EACH ROW EXECUTE FUNCTION registry_refuse_change();
            CREATE TRIGGER registry_audit_no_truncate BEFORE TRUNCATE ON registry_audit FOR EACH STATEMENT EXECUTE FUNCTION registry_refuse_change();
            CREATE TRIGGER registry_versions_no_update BEFORE UPDATE ON registry_versions FOR EACH ROW EXECUTE FUNCTION registry_refuse_change();
            CREATE TRIGGER registry_artifacts_no_update BEFORE UPDATE ON registry_artifacts FOR EACH ROW EXECUTE FUNCTION registry_refuse_change();
            CREATE TRIGGER registry_metrics_no_update BEFORE UPDATE ON registry_metrics FOR EACH ROW EXECUTE FUNCTION registry_refuse_change();""",
    },
]


def migrations_for(dialect: str) -> list[str]:
    return [m if isinstance(m, str) else m[dialect] for m in MIGRATIONS]
