-- The state database of the last release before versioned state (0.1.0, commit 752ae24): its
-- DDL as that release's code ran it (standalone/store.rs SCHEMA, audit/mod.rs CREATE_RECORDS and
-- CREATE_HEAD, verbatim), then every row its binary wrote while reconciling a manifest directory:
-- AlertChannels `default/ops` (verified against a live webhook), `default/pager` (failing, port
-- closed) and `team-a/quiet` (not verified), a Tenant, and a broken manifest. The audit chain
-- is signed with before-versioning.audit.key. Portable to SQLite and PostgreSQL.
CREATE TABLE IF NOT EXISTS objects (
        kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
        uid TEXT NOT NULL, generation BIGINT NOT NULL,
        spec_hash TEXT NOT NULL, object_hash TEXT NOT NULL,
        object TEXT NOT NULL, status TEXT,
        file TEXT NOT NULL, line BIGINT NOT NULL, deleting BIGINT NOT NULL,
        created TEXT NOT NULL, updated TEXT NOT NULL,
        PRIMARY KEY (kind, namespace, name));
CREATE TABLE IF NOT EXISTS problems (
        file TEXT NOT NULL, line BIGINT NOT NULL, col BIGINT NOT NULL, field TEXT NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
        time TEXT NOT NULL, kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL, uid TEXT NOT NULL,
        type TEXT NOT NULL, reason TEXT NOT NULL, action TEXT NOT NULL, note TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_object ON events (kind, namespace, name, time);
CREATE TABLE IF NOT EXISTS audit_records (
    seq BIGINT PRIMARY KEY,
    time TEXT NOT NULL,
    controller TEXT NOT NULL,
    kind TEXT NOT NULL,
    namespace TEXT NULL,
    name TEXT NOT NULL,
    uid TEXT NOT NULL,
    generation BIGINT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER PRIMARY KEY,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO objects (kind, namespace, name, uid, generation, spec_hash, object_hash, object, status, file, line, deleting, created, updated) VALUES ('AlertChannel', 'default', 'ops', '553d75e8-b987-4528-a1c7-4c98b6e7de56', 2, 'd6fe37bcd3b97faf62e04ca74d031e6a9e0c964b38f8c342127c508f960b47e8', '095a1a35a0249466205b9fb80669f06112b83869623864b2ec74ffce20f030f5', '{"apiVersion":"infrapilot.io/v1alpha1","kind":"AlertChannel","metadata":{"creationTimestamp":"2026-11-25T23:53:47.469567088Z","generation":2,"name":"ops","namespace":"default","uid":"553d75e8-b987-4528-a1c7-4c98b6e7de56"},"spec":{"verify":true,"webhook":{"url":"http://127.0.0.1:18765/alerts2"}}}', '{"conditions":[{"lastTransitionTime":"2026-11-25T23:53:47Z","message":"verification message delivered to webhook http://127.0.0.1:18765","observedGeneration":2,"reason":"Verified","status":"True","type":"Ready"}],"deliveryFailures":0,"lastDelivery":{"message":"HTTP 200","success":true,"time":"2026-11-25T23:54:02Z"},"observedGeneration":2,"type":"webhook","verified":true}', 'manifests/channels.yaml', 1, 0, '2026-11-25T23:53:47.469567088Z', '2026-11-25T23:54:02.39295562Z');
INSERT INTO objects (kind, namespace, name, uid, generation, spec_hash, object_hash, object, status, file, line, deleting, created, updated) VALUES ('AlertChannel', 'default', 'pager', '09a06095-6a0a-4b85-953f-b0df659affdc', 1, '9bfd607b42326930dc7e30898f5df76c85e1e316fceea9d3c7882a404f3d5555', 'e64ada91d37e3f05266c608507cf22b488332d7078a5996b1adeb04380ebb117', '{"apiVersion":"infrapilot.io/v1alpha1","kind":"AlertChannel","metadata":{"creationTimestamp":"2026-11-25T23:53:47.469567088Z","generation":1,"name":"pager","namespace":"default","uid":"09a06095-6a0a-4b85-953f-b0df659affdc"},"spec":{"verify":true,"webhook":{"url":"http://127.0.0.1:9/alerts"}}}', '{"conditions":[{"lastTransitionTime":"2026-11-25T23:53:47Z","message":"could not reach webhook http://127.0.0.1:9: error sending request: client error (Connect): tcp connect error: Connection refused (os error 111)","observedGeneration":1,"reason":"Unreachable","status":"False","type":"Ready"}],"deliveryFailures":3,"lastDelivery":{"message":"could not reach webhook http://127.0.0.1:9: error sending request: client error (Connect): tcp connect error: Connection refused (os error 111)","success":false,"time":"2026-11-25T23:54:02Z"},"observedGeneration":1,"type":"webhook","verified":false}', 'manifests/channels.yaml', 11, 0, '2026-11-25T23:53:47.469567088Z', '2026-11-25T23:53:47.469567088Z');
INSERT INTO objects (kind, namespace, name, uid, generation, spec_hash, object_hash, object, status, file, line, deleting, created, updated) VALUES ('AlertChannel', 'team-a', 'quiet', '64bf3841-f7c6-4e86-b3d5-3958488d7725', 1, '0d6adc288c47c9b7ec009802ecf3188c1652327d69a7ba15057e85b48f20c60a', 'be296383ed35160bf4e05a8d3c0820b8296f9c779fb6687f181555767a4b2ed4', '{"apiVersion":"infrapilot.io/v1alpha1","kind":"AlertChannel","metadata":{"creationTimestamp":"2026-11-25T23:53:47.469567088Z","generation":1,"name":"quiet","namespace":"team-a","uid":"64bf3841-f7c6-4e86-b3d5-3958488d7725"},"spec":{"webhook":{"url":"http://127.0.0.1:18765/quiet"}}}', '{"conditions":[{"lastTransitionTime":"2026-11-25T23:53:47Z","message":"delivers to webhook http://127.0.0.1:18765; verification is off","observedGeneration":1,"reason":"Configured","status":"True","type":"Ready"}],"deliveryFailures":0,"observedGeneration":1,"type":"webhook","verified":false}', 'manifests/channels.yaml', 21, 0, '2026-11-25T23:53:47.469567088Z', '2026-11-25T23:53:47.469567088Z');
INSERT INTO objects (kind, namespace, name, uid, generation, spec_hash, object_hash, object, status, file, line, deleting, created, updated) VALUES ('Tenant', '', 'acme', 'af905593-93b1-4d58-bc67-b6f067ed3f3e', 1, 'cc0f0ce148ccd1e4a258ade86bb738368fb64132e2f647a764f7ea10fc00d57c', '73b2424ec001c2f5f9706da503c11a3196fcb1d4e6d58352a1236f864d6e53b6', '{"apiVersion":"infrapilot.io/v1alpha1","kind":"Tenant","metadata":{"creationTimestamp":"2026-11-25T23:53:47.469567088Z","generation":1,"name":"acme","uid":"af905593-93b1-4d58-bc67-b6f067ed3f3e"},"spec":{"database":{"isolation":"Database"},"displayName":"ACME Corporation"}}', NULL, 'manifests/channels.yaml', 30, 0, '2026-11-25T23:53:47.469567088Z', '2026-11-25T23:53:47.469567088Z');
INSERT INTO problems (file, line, col, field, reason) VALUES ('manifests/broken.yaml', 7, 5, 'spec.webhook.uurl', 'unknown field "uurl"');
INSERT INTO events (time, kind, namespace, name, uid, type, reason, action, note) VALUES ('2026-11-25T23:53:47.478526491Z', 'AlertChannel', 'default', 'pager', '09a06095-6a0a-4b85-953f-b0df659affdc', 'Warning', 'DeliveryFailed', 'Verify', 'could not reach webhook http://127.0.0.1:9: error sending request: client error (Connect): tcp connect error: Connection refused (os error 111)');
INSERT INTO events (time, kind, namespace, name, uid, type, reason, action, note) VALUES ('2026-11-25T23:53:47.479006952Z', 'AlertChannel', 'default', 'ops', '553d75e8-b987-4528-a1c7-4c98b6e7de56', 'Normal', 'Verified', 'Verify', 'verification message delivered to webhook http://127.0.0.1:18765');
INSERT INTO events (time, kind, namespace, name, uid, type, reason, action, note) VALUES ('2026-11-25T23:53:52.519178988Z', 'AlertChannel', 'default', 'pager', '09a06095-6a0a-4b85-953f-b0df659affdc', 'Warning', 'DeliveryFailed', 'Verify', 'could not reach webhook http://127.0.0.1:9: error sending request: client error (Connect): tcp connect error: Connection refused (os error 111)');
INSERT INTO events (time, kind, namespace, name, uid, type, reason, action, note) VALUES ('2026-11-25T23:54:02.400765508Z', 'AlertChannel', 'default', 'pager', '09a06095-6a0a-4b85-953f-b0df659affdc', 'Warning', 'DeliveryFailed', 'Verify', 'could not reach webhook http://127.0.0.1:9: error sending request: client error (Connect): tcp connect error: Connection refused (os error 111)');
INSERT INTO events (time, kind, namespace, name, uid, type, reason, action, note) VALUES ('2026-11-25T23:54:02.401740727Z', 'AlertChannel', 'default', 'ops', '553d75e8-b987-4528-a1c7-4c98b6e7de56', 'Normal', 'Verified', 'Verify', 'verification message delivered to webhook http://127.0.0.1:18765');
INSERT INTO audit_records (seq, time, controller, kind, namespace, name, uid, generation, action, target, outcome, detail, prev_hash, hash) VALUES (1, '2026-11-25T23:53:52.490294005Z', 'alertchannel', 'AlertChannel', 'default', 'pager', '09a06095-6a0a-4b85-953f-b0df659affdc', 1, 'notification.send', 'webhook http://127.0.0.1:9', 'Failure', 'could not reach webhook http://127.0.0.1:9: error sending request: client error (Connect): tcp connect error: Connection refused (os error 111)', '', '2afc25585f1904fe328d2745db094e489501579d9f6338fa060c22996068a9e3');
INSERT INTO audit_records (seq, time, controller, kind, namespace, name, uid, generation, action, target, outcome, detail, prev_hash, hash) VALUES (2, '2026-11-25T23:54:02.398367029Z', 'alertchannel', 'AlertChannel', 'default', 'pager', '09a06095-6a0a-4b85-953f-b0df659affdc', 1, 'notification.send', 'webhook http://127.0.0.1:9', 'Failure', 'could not reach webhook http://127.0.0.1:9: error sending request: client error (Connect): tcp connect error: Connection refused (os error 111)', '2afc25585f1904fe328d2745db094e489501579d9f6338fa060c22996068a9e3', 'eeeaac118f4e168e9493adf811db26c2fa314183a03dead02c90126bfccb14f8');
INSERT INTO audit_head (id, seq, hash) VALUES (1, 2, 'eeeaac118f4e168e9493adf811db26c2fa314183a03dead02c90126bfccb14f8');
