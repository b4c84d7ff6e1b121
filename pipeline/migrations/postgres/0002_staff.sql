-- The staff directory of the notifier (`veilleuse notifier`, see docs/notifier.md): who is
-- notified of a site's alerts. On-duty staff get an alert first; all staff of the site once it
-- is escalated (rule 10). Managed with `veilleuse staff add/remove/list`.
CREATE TABLE staff (
    site_id     text        NOT NULL,
    name        text        NOT NULL,  -- unique per site; what alert_events names as recipient
    email       text,                  -- notified by e-mail (SMTP) when set
    webhook_url text,                  -- notified by a signed webhook when set
    on_duty     boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (site_id, name),
    CHECK (email IS NOT NULL OR webhook_url IS NOT NULL)
);
CREATE INDEX staff_on_duty ON staff (site_id) WHERE on_duty;
