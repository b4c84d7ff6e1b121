-- The console's board polls the steps recorded since its last look (notified, escalated,
-- acknowledged: alerts.v1 does not carry them), every second per API process: by recorded_at,
-- the database's own clock, which the notifier and the API's acknowledgement both leave to
-- now(). Without this index each poll would read the whole of alert_events.
CREATE INDEX alert_events_recorded ON alert_events (recorded_at);
