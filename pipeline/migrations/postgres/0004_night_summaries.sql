-- One row per lamp and local night from activity.nightly.v1 (Avro night_summary.v1): what the
-- care team reads in the morning (docs/detection.md, "The night summary"; docs/postgres.md).
-- night_of is the local date of the evening the night starts, in the site's time_zone.
-- A record for a night already stored replaces it only if it was emitted later (emitted_at):
-- a redelivered copy (same emitted_at) or an older one changes nothing.
CREATE TABLE night_summaries (
    lamp_id                    text             NOT NULL,
    night_of                   date             NOT NULL,
    site_id                    text             NOT NULL,
    time_zone                  text             NOT NULL,
    night_start                timestamptz      NOT NULL,  -- 22:00 local, lamp event time
    night_end                  timestamptz      NOT NULL,  -- 07:00 local, exclusive
    night_minutes              integer          NOT NULL,
    covered_minutes            integer          NOT NULL,
    messages                   integer          NOT NULL,
    minutes_in_bed             integer          NOT NULL,
    minutes_out_of_bed         integer          NOT NULL,
    bed_exits                  integer          NOT NULL,
    bathroom_visits            integer          NOT NULL,
    room_exits                 integer          NOT NULL,
    restless_motion_events     integer          NOT NULL,
    restlessness_per_hour      double precision,          -- NULL below one minute in bed
    longest_still_minutes      integer          NOT NULL,
    latest_return_to_bed       timestamptz,               -- NULL: never back into bed
    latest_return_to_bed_local text,                      -- HH:MM in time_zone
    emitted_at                 timestamptz      NOT NULL,
    -- Where the stored version was read.
    source_partition           integer          NOT NULL,
    source_offset              bigint           NOT NULL,
    written_at                 timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (lamp_id, night_of),
    CHECK (night_end > night_start)
);
-- The care team's morning read: every lamp of a home for one night.
CREATE INDEX night_summaries_site_night ON night_summaries (site_id, night_of);
