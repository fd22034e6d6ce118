//! The schema, versioned: steps are only ever appended, and a database
//! records the last one it applied. One text serves both databases: the
//! integer columns are BIGINT (SQLite gives it integer affinity), and the
//! one spelling they do not share, an auto-numbered key, is written
//! `AUTO_ID` (see [`crate::db::Dialect::ddl`]).

use crate::db::Migration;

pub const MIGRATIONS: &[Migration] = &[
    Migration(
        r#"
CREATE TABLE swarms (
    name TEXT PRIMARY KEY,
    auto_enrol TEXT NOT NULL DEFAULT 'off',
    cluster_id TEXT,
    manager_addrs TEXT NOT NULL DEFAULT '[]',
    worker_token TEXT,
    manager_token TEXT,
    lease_holder TEXT,
    lease_expires BIGINT,
    revision BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL
);
CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    swarm TEXT NOT NULL REFERENCES swarms(name),
    role TEXT NOT NULL,
    labels TEXT NOT NULL DEFAULT '{}',
    facts TEXT NOT NULL DEFAULT '{}',
    state TEXT NOT NULL,
    credential_hash TEXT,
    node_id TEXT,
    stale_node_ids TEXT NOT NULL DEFAULT '[]',
    cluster_id TEXT,
    engine_version TEXT,
    last_seen BIGINT,
    last_error TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX devices_by_swarm ON devices(swarm);
CREATE UNIQUE INDEX devices_by_credential ON devices(credential_hash);
CREATE UNIQUE INDEX one_leader_per_swarm ON devices(swarm) WHERE role = 'leader';
CREATE TABLE events (
    id AUTO_ID,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL
);
"#,
    ),
    Migration(
        r#"
CREATE TABLE services (
    swarm TEXT NOT NULL REFERENCES swarms(name),
    name TEXT NOT NULL,
    stack TEXT,
    spec TEXT NOT NULL,
    revision BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (swarm, name)
);
CREATE TABLE observed (
    swarm TEXT PRIMARY KEY REFERENCES swarms(name),
    report TEXT NOT NULL,
    device TEXT NOT NULL,
    at BIGINT NOT NULL
);
"#,
    ),
    // What every replica must share: the admin token's and the
    // provisioning key's hashes, the CA. In the database, they travel with
    // its backups too.
    Migration("CREATE TABLE server_credentials (name TEXT PRIMARY KEY, value TEXT NOT NULL);"),
    // Secrets (sealed), configs (base64) and registry logins (sealed
    // password, user name in `detail`): the current version of each. And
    // each service's spec before its last change, for `service rollback`;
    // open `service logs` requests with their lines; and the public keys
    // a swarm's images must be signed by.
    Migration(
        r#"
CREATE TABLE swarm_files (
    swarm TEXT NOT NULL REFERENCES swarms(name),
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    version BIGINT NOT NULL,
    value TEXT NOT NULL,
    digest TEXT NOT NULL,
    detail TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (swarm, kind, name)
);
ALTER TABLE services ADD COLUMN previous_spec TEXT;
ALTER TABLE swarms ADD COLUMN signing_keys TEXT NOT NULL DEFAULT '[]';
CREATE TABLE log_requests (
    id TEXT PRIMARY KEY,
    swarm TEXT NOT NULL,
    service TEXT NOT NULL,
    options TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    started BIGINT NOT NULL DEFAULT 0,
    done BIGINT NOT NULL DEFAULT 0,
    error TEXT,
    last_seq BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE log_lines (
    request TEXT NOT NULL,
    seq BIGINT NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (request, seq)
);
"#,
    ),
    // Hardware for services: what each swarm lets its services be given
    // (device patterns and cgroup rules; privileged or not), and the
    // swarm's Ed25519 key that signs the grants (sealed private key, and
    // its public half for the devices' runtimes). And whether each device's
    // node is a swarm manager as it last reported (roles change after
    // joining). Join-token rotations asked for, and the one the stored
    // tokens answer.
    Migration(
        r#"
ALTER TABLE swarms ADD COLUMN allowed_devices TEXT NOT NULL DEFAULT '[]';
ALTER TABLE swarms ADD COLUMN allow_privileged BIGINT NOT NULL DEFAULT 0;
ALTER TABLE swarms ADD COLUMN grant_key TEXT;
ALTER TABLE swarms ADD COLUMN grant_public_key TEXT;
ALTER TABLE devices ADD COLUMN swarm_manager BIGINT;
ALTER TABLE swarms ADD COLUMN token_rotation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE swarms ADD COLUMN tokens_generation BIGINT NOT NULL DEFAULT 0;
"#,
    ),
    // Managers kept: each swarm's target count (0: off), grace period and
    // spread label; the quorum recovery in progress (one device at a time)
    // and the last one finished. Devices never to be promoted, and when
    // each last reported being the raft leader (the freshest raft log);
    // the agent version each runs; whether each manager reaches a raft
    // leader, and since when none has (for automatic recovery). Each
    // swarm's latest agent rollout, its waves and each device's state in
    // them (JSON: a rollout is rewritten whole at each step).
    Migration(
        r#"
ALTER TABLE swarms ADD COLUMN managers_target BIGINT NOT NULL DEFAULT 0;
ALTER TABLE swarms ADD COLUMN manager_grace_secs BIGINT NOT NULL DEFAULT 60;
ALTER TABLE swarms ADD COLUMN spread_label TEXT;
ALTER TABLE swarms ADD COLUMN recovery_device TEXT;
ALTER TABLE swarms ADD COLUMN recovery_generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE swarms ADD COLUMN recovery_started BIGINT;
ALTER TABLE devices ADD COLUMN never_manager BIGINT NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN raft_leader BIGINT NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN raft_leader_at BIGINT;
ALTER TABLE devices ADD COLUMN agent_version TEXT;
ALTER TABLE devices ADD COLUMN has_quorum BIGINT;
ALTER TABLE swarms ADD COLUMN auto_recover_secs BIGINT NOT NULL DEFAULT 0;
ALTER TABLE swarms ADD COLUMN quorum_lost_at BIGINT;
CREATE TABLE agent_rollouts (
    swarm TEXT PRIMARY KEY REFERENCES swarms(name),
    rollout BIGINT NOT NULL,
    image TEXT NOT NULL,
    state TEXT NOT NULL,
    wave BIGINT NOT NULL,
    waves TEXT NOT NULL,
    deadline_secs BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    wave_started_at BIGINT NOT NULL
);
"#,
    ),
    // Seeing the fog: each device's latest telemetry sample and when it
    // came, how often its agent reports (offline after three intervals
    // unheard) and since when it is offline; a day of telemetry at one
    // minute per row, values as integers (tenths of a percent and of a
    // degree, hundredths of load) so both databases store them alike. Log
    // requests for one device's agent (`device logs`) beside the services'.
    // Dashboard sessions (the hash of the cookie's value only).
    Migration(
        r#"
ALTER TABLE devices ADD COLUMN telemetry TEXT;
ALTER TABLE devices ADD COLUMN telemetry_at BIGINT;
ALTER TABLE devices ADD COLUMN heartbeat_secs BIGINT;
ALTER TABLE devices ADD COLUMN offline_since BIGINT;
CREATE TABLE telemetry_history (
    device TEXT NOT NULL,
    minute BIGINT NOT NULL,
    cpu_tenths BIGINT,
    load1_hundredths BIGINT,
    memory_used_mb BIGINT,
    disk_free_mb BIGINT,
    temperature_tenths BIGINT,
    PRIMARY KEY (device, minute)
);
CREATE INDEX telemetry_history_minute ON telemetry_history (minute);
ALTER TABLE log_requests ADD COLUMN device TEXT;
CREATE TABLE dashboard_sessions (
    id_hash TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
"#,
    ),
    // Trust: each device's identity key (and its TPM's endorsement key,
    // where it has one); another key waiting to re-enrol as the device
    // until an operator approves it; what a swarm does with such a
    // re-enrolment. Enrolment tokens, stored as hashes.
    Migration(
        r#"
ALTER TABLE devices ADD COLUMN public_key TEXT;
ALTER TABLE devices ADD COLUMN endorsement_key TEXT;
ALTER TABLE devices ADD COLUMN pending_key TEXT;
ALTER TABLE devices ADD COLUMN pending_endorsement_key TEXT;
ALTER TABLE devices ADD COLUMN pending_since BIGINT;
ALTER TABLE swarms ADD COLUMN reimage TEXT NOT NULL DEFAULT 'approve';
CREATE TABLE enrol_tokens (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    swarm TEXT NOT NULL REFERENCES swarms(name),
    labels TEXT NOT NULL DEFAULT '{}',
    role TEXT NOT NULL,
    uses BIGINT,
    used BIGINT NOT NULL DEFAULT 0,
    expires_at BIGINT,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
"#,
    ),
    // Named operators with roles (viewer, operator, admin), optionally per
    // swarm; their API tokens (hashed, expiring) and dashboard sessions
    // per user. The admin token stays the built-in first admin.
    Migration(
        r#"
CREATE TABLE users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    swarms TEXT NOT NULL DEFAULT '[]',
    password_hash TEXT,
    created_at BIGINT NOT NULL
);
CREATE TABLE user_tokens (
    id TEXT PRIMARY KEY,
    user_name TEXT NOT NULL REFERENCES users(name),
    hash TEXT NOT NULL UNIQUE,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
ALTER TABLE dashboard_sessions ADD COLUMN user_name TEXT;
"#,
    ),
    // Users' client certificates from the fleet CA, by fingerprint (to
    // recognise and to revoke them).
    Migration(
        r#"
CREATE TABLE user_certificates (
    fingerprint TEXT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    user_name TEXT NOT NULL REFERENCES users(name),
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
"#,
    ),
    // Events are pruned by age (`retention`); the replicas serving the
    // fleet check in (`replicas`), which is also /readyz's write; each
    // device's agent protocol version (`version`).
    Migration(
        r#"
CREATE INDEX events_by_time ON events (at);
ALTER TABLE devices ADD COLUMN protocol TEXT;
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    seen_at BIGINT NOT NULL
);
"#,
    ),
    // Telemetry shaped for 100,000 devices: each device's latest sample
    // in a narrow table of its own (a flush no longer rewrites the wide
    // `devices` row), with the minute its history last took; the history
    // one row per device and hour (`minutes`: an entry per minute appended
    // as it comes, see `store::telemetry`) instead of one per device and
    // minute, 60 times fewer rows and index entries. The old rows are
    // carried over. Agent rollouts kept per device (each device's wave,
    // place in the plan, state and detail) instead of one JSON plan
    // rewritten at every device's outcome; `agent_rollouts.waves` stays for
    // rollouts written before, moved to rows at start
    // (`carry_over_rollout_plans`). Devices indexed by swarm and id, the
    // order listings read them in chunks in.
    Migration(
        r#"
CREATE TABLE device_telemetry (
    device TEXT PRIMARY KEY,
    sample TEXT NOT NULL,
    at BIGINT NOT NULL,
    minute BIGINT NOT NULL
);
INSERT INTO device_telemetry (device, sample, at, minute)
    SELECT id, telemetry, telemetry_at, telemetry_at - telemetry_at % 60 FROM devices
    WHERE telemetry IS NOT NULL AND telemetry_at IS NOT NULL;
ALTER TABLE devices DROP COLUMN telemetry;
ALTER TABLE devices DROP COLUMN telemetry_at;
CREATE TABLE telemetry_hours (
    device TEXT NOT NULL,
    hour BIGINT NOT NULL,
    minutes TEXT NOT NULL,
    PRIMARY KEY (device, hour)
);
CREATE INDEX telemetry_hours_by_hour ON telemetry_hours (hour);
INSERT INTO telemetry_hours (device, hour, minutes)
    SELECT device, minute - minute % 3600, CONCAT_AGG(
        CAST((minute % 3600) / 60 AS TEXT)
        || ',' || COALESCE(CAST(cpu_tenths AS TEXT), '')
        || ',' || COALESCE(CAST(load1_hundredths AS TEXT), '')
        || ',' || COALESCE(CAST(memory_used_mb AS TEXT), '')
        || ',' || COALESCE(CAST(disk_free_mb AS TEXT), '')
        || ',' || COALESCE(CAST(temperature_tenths AS TEXT), '') || ';', '')
    FROM telemetry_history GROUP BY device, minute - minute % 3600;
DROP TABLE telemetry_history;
CREATE TABLE agent_rollout_devices (
    swarm TEXT NOT NULL,
    device TEXT NOT NULL,
    wave BIGINT NOT NULL,
    position BIGINT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (swarm, device)
);
CREATE INDEX agent_rollout_devices_by_wave ON agent_rollout_devices (swarm, wave, state);
DROP INDEX devices_by_swarm;
CREATE INDEX devices_by_swarm ON devices (swarm, id);
"#,
    ),
];
