// Progressive enhancement of the board: the open alerts update live from the server's event
// stream (text/event-stream). Without JavaScript every page still works; a reload refreshes.
// No framework and nothing from elsewhere (CSP: script-src 'self'); DOM built with
// textContent only, never HTML from the server's data.
(function () {
  "use strict";

  var table = document.querySelector('[data-testid="open-alerts"][data-events]');
  if (!table || !window.EventSource) {
    return;
  }
  var body = table.tBodies[0];
  var status = document.querySelector('[data-testid="live-status"]');
  var emptyNote = document.querySelector('[data-testid="no-open-alerts"]');
  var rank = { critical: 0, warning: 1, info: 2 };

  function setLive(on) {
    if (!status) return;
    status.setAttribute("data-live", on ? "on" : "off");
    var label = status.querySelector("span");
    if (label) label.textContent = label.getAttribute(on ? "data-live-on" : "data-live-off");
  }

  function cell(row, content) {
    var td = document.createElement("td");
    if (content) td.appendChild(content);
    row.appendChild(td);
    return td;
  }

  function text(value) {
    return document.createTextNode(value == null ? "" : String(value));
  }

  function link(href, label) {
    var a = document.createElement("a");
    a.href = href;
    a.textContent = label;
    return a;
  }

  function span(field, value, className) {
    var s = document.createElement("span");
    s.setAttribute("data-field", field);
    if (className) s.className = className;
    s.textContent = value == null ? "" : String(value);
    return s;
  }

  function kindLink(alert) {
    var a = link(alert.url, "");
    if (alert.kind_known === false) {
      // A kind the catalogue does not name: its own name, marked as such (as the pages do).
      var code = document.createElement("code");
      code.className = "raw";
      code.title = alert.untranslated || "";
      code.textContent = alert.kind;
      a.appendChild(code);
    } else {
      a.textContent = alert.kind_label;
    }
    return a;
  }

  function rowFor(alert) {
    var row = document.createElement("tr");
    row.setAttribute("data-testid", "alert-row");
    row.setAttribute("data-alert-id", alert.alert_id);
    row.setAttribute("data-step", "");
    row.className = "sev-" + alert.severity + " fresh";
    cell(row, kindLink(alert));
    var badge = document.createElement("span");
    badge.className = "badge sev-" + alert.severity;
    badge.textContent = alert.severity_label;
    cell(row, badge);
    var state = cell(row, span("state", alert.state_label || ""));
    state.appendChild(text(" "));
    state.appendChild(span("by", ""));
    state.appendChild(text(" "));
    state.appendChild(span("step", "", "step"));
    cell(row, link(alert.lamp_url, alert.lamp_id));
    var time = document.createElement("time");
    time.setAttribute("datetime", alert.incident_started_at);
    time.textContent = alert.started_local;
    cell(row, time);
    cell(row, text("0 min"));
    return row;
  }

  function place(row, alert) {
    row.setAttribute("data-state", alert.state);
    row.setAttribute("data-severity", alert.severity);
    var mine = rank[alert.severity] === undefined ? 9 : rank[alert.severity];
    var rows = body.rows;
    for (var i = 0; i < rows.length; i++) {
      var other = rank[rows[i].getAttribute("data-severity")];
      if (rows[i] !== row && (other === undefined ? 9 : other) > mine) {
        body.insertBefore(row, rows[i]);
        return;
      }
    }
    if (row.parentNode !== body) body.appendChild(row);
  }

  function field(row, name) {
    var found = row.querySelector('[data-field="' + name + '"]');
    if (!found) {
      found = span(name, "", name === "step" ? "step" : "");
      var holder = row.querySelector('[data-field="state"]');
      holder.parentNode.appendChild(text(" "));
      holder.parentNode.appendChild(found);
    }
    return found;
  }

  // A step of the alert's life that alerts.v1 does not carry (notified, escalated,
  // acknowledged), polled by the server from PostgreSQL.
  function onStep(step) {
    var row = body.querySelector('tr[data-alert-id="' + CSS.escape(step.alert_id) + '"]');
    // Not on the board: resolved already (a step can follow the resolution), or raised while
    // the stream reconnected, which the next reload shows. A step alone never adds a row.
    if (!row) return;
    if (step.step !== "acknowledged") {
      // The state column says "acknowledged" already; the step shows the latest notification
      // or escalation, which an acknowledgement does not erase.
      row.setAttribute("data-step", step.step);
      field(row, "step").textContent = step.step_label;
    }
    if (step.state) {
      row.setAttribute("data-state", step.state);
      field(row, "state").textContent = step.state_label;
    }
    if (step.acknowledged_by) {
      field(row, "by").textContent = "(" + step.by_label + " " + step.acknowledged_by + ")";
    }
  }

  function onAlert(alert) {
    var existing = body.querySelector('tr[data-alert-id="' + CSS.escape(alert.alert_id) + '"]');
    if (alert.state === "resolved") {
      if (existing) existing.parentNode.removeChild(existing);
    } else if (existing) {
      existing.setAttribute("data-state", alert.state);
      var state = existing.querySelector('[data-field="state"]');
      if (state) state.textContent = alert.state_label;
    } else {
      place(rowFor(alert), alert);
    }
    if (emptyNote) emptyNote.classList.toggle("hidden", body.rows.length > 0);
  }

  var source = new EventSource(table.getAttribute("data-events"));
  source.addEventListener("ready", function () { setLive(true); });
  source.addEventListener("alert", function (event) {
    try {
      onAlert(JSON.parse(event.data));
    } catch (error) {
      // A malformed event is dropped; the next reload shows the truth.
    }
  });
  source.addEventListener("step", function (event) {
    try {
      onStep(JSON.parse(event.data));
    } catch (error) {
      // As above.
    }
  });
  // The server's own live updates stopped (PostgreSQL or Kafka away) or came back: the
  // connection to us is fine, but the board is not live meanwhile.
  source.addEventListener("status", function (event) {
    try {
      setLive(JSON.parse(event.data).live === true);
    } catch (error) {
      setLive(false);
    }
  });
  source.onerror = function () { setLive(false); };
})();
