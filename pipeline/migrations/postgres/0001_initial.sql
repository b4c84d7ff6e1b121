-- The tables of the PostgreSQL sink (`veilleuse sink postgres`), see docs/postgres.md.
-- Times are timestamptz (UTC instants); a lamp's "hour" and "day" are in its event time.

-- One row per lamp and hour: the last activity.hourly.v1 record received for that hour.
CREATE TABLE activity_hourly (
    lamp_id              text             NOT NULL,
    hour_start           timestamptz      NOT NULL,
    site_id              text             NOT NULL,
    messages             bigint           NOT NULL,
    motion_events        bigint           NOT NULL,
    active_minutes       integer          NOT NULL,
    minutes_in_bed       integer          NOT NULL,
    minutes_absent       integer          NOT NULL,
    bathroom_visits      integer          NOT NULL,
    falls                integer          NOT NULL,
    help_requests        integer          NOT NULL,
    temperature_readings integer          NOT NULL,
    temperature_min      double precision,
    temperature_mean     double precision,
    temperature_max      double precision,
    last_seen_at         timestamptz      NOT NULL,
    firmware             text,
    emitted_at           timestamptz      NOT NULL,
    -- Where the row's version was read: activity.hourly.v1 partition and offset.
    source_partition     integer          NOT NULL,
    source_offset        bigint           NOT NULL,
    written_at           timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (lamp_id, hour_start)
);
CREATE INDEX activity_hourly_site_hour ON activity_hourly (site_id, hour_start);

-- The daily roll-up of activity_hourly, per lamp and UTC day of hour_start, recomputed from
-- activity_hourly in the transaction that changes one of the day's hours.
CREATE TABLE activity_daily (
    lamp_id              text             NOT NULL,
    day                  date             NOT NULL,
    site_id              text             NOT NULL,  -- the site of the day's latest hour
    hours                integer          NOT NULL,  -- hours of the day with a record
    messages             bigint           NOT NULL,
    motion_events        bigint           NOT NULL,
    active_minutes       bigint           NOT NULL,
    minutes_in_bed       bigint           NOT NULL,
    minutes_absent       bigint           NOT NULL,
    bathroom_visits      bigint           NOT NULL,
    falls                bigint           NOT NULL,
    help_requests        bigint           NOT NULL,
    temperature_readings bigint           NOT NULL,
    temperature_min      double precision,
    -- Mean of the hours' means weighted by their readings.
    temperature_mean     double precision,
    temperature_max      double precision,
    last_seen_at         timestamptz      NOT NULL,
    updated_at           timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (lamp_id, day)
);
CREATE INDEX activity_daily_site_day ON activity_daily (site_id, day);

-- One row per alert (alert_id from alerts.v1): its current state and when each step came.
CREATE TABLE alerts (
    alert_id            text        PRIMARY KEY,
    kind                text        NOT NULL,
    severity            text        NOT NULL,
    site_id             text        NOT NULL,
    lamp_id             text        NOT NULL,
    incident_started_at timestamptz NOT NULL,  -- event time (the lamp's clock)
    state               text        NOT NULL,
    raised_at           timestamptz,            -- emitted_at of its first 'raised' step
    resolved_at         timestamptz,            -- emitted_at of its first 'resolved' step
    details             jsonb       NOT NULL DEFAULT '{}',  -- of its latest step
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alerts_site_started ON alerts (site_id, incident_started_at);
CREATE INDEX alerts_lamp_started ON alerts (lamp_id, incident_started_at);
CREATE INDEX alerts_open_offline ON alerts (lamp_id) WHERE kind = 'lamp_offline' AND state = 'raised';

-- The life of an alert, one row per step: 'raised' and 'resolved' from alerts.v1; the notifier
-- appends its own steps (notified, acknowledged, escalated...), free text on purpose. A step
-- that happens more than once (a second notification) takes the next occurrence number.
CREATE TABLE alert_events (
    alert_id         text        NOT NULL REFERENCES alerts (alert_id) ON DELETE CASCADE,
    step             text        NOT NULL,
    occurrence       integer     NOT NULL DEFAULT 1,
    emitted_at       timestamptz NOT NULL,
    details          jsonb       NOT NULL DEFAULT '{}',
    -- Where the step was read (NULL for steps not read from Kafka).
    source_topic     text,
    source_partition integer,
    source_offset    bigint,
    recorded_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (alert_id, step, occurrence)
);
CREATE INDEX alert_events_emitted ON alert_events (emitted_at);

-- One row per lamp seen on activity.hourly.v1 or alerts.v1.
CREATE TABLE lamps (
    lamp_id       text        PRIMARY KEY,
    site_id       text        NOT NULL,
    last_seen_at  timestamptz,           -- the greatest last_seen_at of its activity records
    firmware      text,                  -- from the latest hour that reported one
    firmware_hour timestamptz,           -- that hour
    online        boolean     NOT NULL DEFAULT true,  -- false while a lamp_offline alert is open
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX lamps_site ON lamps (site_id);

-- Kafka offsets of the sinks that keep them in this database, written in the transaction of
-- the data they cover: the next offset to read per consumer group, topic and partition.
CREATE TABLE sink_offsets (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    next_offset    bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
