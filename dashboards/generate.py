#!/usr/bin/env python3
"""Generates the Grafana dashboards of this folder (the JSON files are committed;
edit here and rerun: python3 dashboards/generate.py). Standard library only.
An optional argument writes them to another folder instead (the test suite
checks that the committed files are what this script generates)."""
import json, os, sys
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
DS = {"type": "prometheus", "uid": "prometheus"}
I = 'instance=~"$instance"'

def panel(title, exprs, unit="short", kind="timeseries", desc="", w=12, h=8):
    # exprs: list of (expr, legend)
    return {"title": title, "exprs": exprs, "unit": unit, "kind": kind, "desc": desc, "w": w, "h": h}

def rate(metric, by=None, sel="", win="5m"):
    s = f"{{{I}{',' + sel if sel else ''}}}"
    inner = f"rate({metric}{s}[{win}])"
    return f"sum by ({by}) ({inner})" if by else f"sum({inner})"

def quant(q, metric, by=None, sel=""):
    s = f"{{{I}{',' + sel if sel else ''}}}"
    labels = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) (rate({metric}_bucket{s}[5m])))"

def g(metric, sel=""):
    return f"{metric}{{{I}{',' + sel if sel else ''}}}"

def build(uid, title, desc, panels, tags):
    out, x, y, rowh = [], 0, 0, 0
    for i, p in enumerate(panels, 1):
        if x + p["w"] > 24:
            x, y = 0, y + rowh
            rowh = 0
        targets = [{"refId": chr(65 + j), "expr": e, "legendFormat": l, "datasource": DS}
                   for j, (e, l) in enumerate(p["exprs"])]
        pd = {"id": i, "type": p["kind"], "title": p["title"], "description": p["desc"],
              "datasource": DS, "gridPos": {"h": p["h"], "w": p["w"], "x": x, "y": y},
              "targets": targets,
              "fieldConfig": {"defaults": {"unit": p["unit"]}, "overrides": []},
              "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                          "tooltip": {"mode": "multi", "sort": "desc"}} if p["kind"] == "timeseries"
                         else {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                               "colorMode": "value", "graphMode": "area", "textMode": "auto"}}
        out.append(pd)
        x += p["w"]; rowh = max(rowh, p["h"])
    d = {"uid": uid, "title": title, "description": desc, "tags": ["inkstream"] + tags,
         "editable": True, "schemaVersion": 39, "version": 1, "refresh": "10s",
         "time": {"from": "now-1h", "to": "now"}, "timezone": "browser", "graphTooltip": 1,
         "annotations": {"list": []},
         "templating": {"list": [{"name": "instance", "label": "instance", "type": "query",
                                  "datasource": DS, "query": {"query": 'label_values(up{job="inkstream"}, instance)', "refId": "instance"},
                                  "definition": 'label_values(up{job="inkstream"}, instance)',
                                  "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
                                  "current": {"selected": True, "text": ["All"], "value": ["$__all"]}}]},
         "links": [{"title": "inkstream", "type": "dashboards", "tags": ["inkstream"], "asDropdown": True}],
         "panels": out}
    with open(os.path.join(OUT, f"{uid.removeprefix('inkstream-')}.json"), "w") as f:
        json.dump(d, f, indent=2)
        f.write("\n")

build("inkstream-overview", "inkstream / Overview",
      "Golden signals of every inkstream instance: traffic, errors, latency, freshness, saturation.", [
    panel("Events accepted /s", [(rate("inkstream_ingest_events_accepted_total"), "accepted")], "ops", "stat", "Events durably appended to the log.", 6, 4),
    panel("Events rejected /s", [(rate("inkstream_ingest_events_rejected_total"), "rejected")], "ops", "stat", "Events refused at ingest (all codes).", 6, 4),
    panel("Watermark lag", [(f"time() - max({g('inkstream_dataflow_watermark_seconds')})", "lag")], "s", "stat", "Wall clock minus the dataflow's event-time watermark.", 6, 4),
    panel("Mirror lag", [(f"max({g('inkstream_mirror_lag_seconds')})", "lag")], "s", "stat", "Age of the oldest log entry not yet in Kafka.", 6, 4),
    panel("HTTP requests /s by status", [(rate("inkstream_http_requests_total", "status"), "{{status}}")], "reqps"),
    panel("HTTP latency p99 by route", [(quant(0.99, "inkstream_http_request_duration_seconds", "route"), "{{route}}")], "s"),
    panel("WebSocket connections", [(f"sum by (path) ({g('inkstream_ws_connections')})", "{{path}}"),
                                    (f"sum({g('inkstream_ws_ingest_connections')})", "/ws/ingest")], "short"),
    panel("Dead letters /s", [(rate("inkstream_dataflow_dead_letters_total", "reason"), "{{reason}}")], "ops"),
    panel("CPU", [(f"rate({g('process_cpu_seconds_total')}[5m])", "{{instance}}")], "percentunit", desc="CPU seconds per second (1 = one core)."),
    panel("Resident memory", [(g("process_resident_memory_bytes"), "{{instance}}")], "bytes"),
    panel("Open file descriptors", [(g("process_open_fds"), "open {{instance}}"), (g("process_max_fds"), "max {{instance}}")], "short"),
    panel("Uptime", [(f"time() - {g('process_start_time_seconds')}", "{{instance}}")], "s"),
], ["overview"])

build("inkstream-ingest-log", "inkstream / Ingest and log",
      "HTTP and WebSocket ingest, the event log (embedded or Redis Streams) and the Kafka mirror.", [
    panel("Accepted /s by type", [(rate("inkstream_ingest_events_accepted_total", "type"), "{{type}}")], "ops"),
    panel("Rejected /s by code", [(rate("inkstream_ingest_events_rejected_total", "code"), "{{code}}")], "ops"),
    panel("Duplicates /s", [(rate("inkstream_ingest_duplicates_total"), "duplicates")], "ops", desc="Events whose id was already stored: acknowledged, not stored again."),
    panel("Batch size p50 / p99", [(quant(0.5, "inkstream_ingest_batch_size_events"), "p50"), (quant(0.99, "inkstream_ingest_batch_size_events"), "p99")], "short"),
    panel("Log append p50 / p99 by backend", [(quant(0.5, "inkstream_log_append_duration_seconds", "backend"), "p50 {{backend}}"),
                                              (quant(0.99, "inkstream_log_append_duration_seconds", "backend"), "p99 {{backend}}")], "s"),
    panel("Log errors /s", [(rate("inkstream_log_errors_total", "backend, op"), "{{backend}} {{op}}")], "ops"),
    panel("Auth failures /s by code", [(rate("inkstream_auth_failures_total", "code"), "{{code}}")], "ops"),
    panel("Connection limit waits /s", [(rate("inkstream_http_connection_limit_waits_total"), "waits")], "ops", desc="Accepts that waited because server.max_connections were open."),
    panel("Mirror delivered /s", [(rate("inkstream_mirror_events_total"), "to Kafka")], "ops"),
    panel("Mirror errors /s by stage", [(rate("inkstream_mirror_errors_total", "stage"), "{{stage}}")], "ops"),
    panel("Mirror lag (entries)", [(g("inkstream_mirror_lag_events"), "{{instance}}")], "short"),
    panel("Mirror lag (age of oldest)", [(g("inkstream_mirror_lag_seconds"), "{{instance}}")], "s"),
    panel("Derived produced to Kafka /s", [(rate("inkstream_derived_produced_total", "outcome"), "{{outcome}}")], "ops"),
    panel("Records read from Kafka /s", [(rate("inkstream_dataflow_source_records_total"), "records")], "ops"),
], ["ingest", "log", "kafka"])

build("inkstream-dataflow", "inkstream / Dataflow",
      "The timely dataflow: input, watermark, per-operator lag and state, epoch delay, late and dead-lettered events.", [
    panel("Events in /s", [(rate("inkstream_dataflow_events_in_total"), "in")], "ops"),
    panel("Derived /s by type", [(rate("inkstream_dataflow_derived_events_total", "type"), "{{type}}")], "ops"),
    panel("Watermark lag", [(f"time() - {g('inkstream_dataflow_watermark_seconds')}", "{{instance}}")], "s", desc="Wall clock minus the input's event-time watermark (allowed disorder included)."),
    panel("Watermark lag by operator", [(f"max by (operator) ({g('inkstream_dataflow_watermark_lag_seconds')})", "{{operator}}")], "s", desc="Wall clock minus each operator's input frontier."),
    panel("Epoch delay p50 / p99", [(quant(0.5, "inkstream_dataflow_epoch_delay_seconds"), "p50"), (quant(0.99, "inkstream_dataflow_epoch_delay_seconds"), "p99")], "s",
          desc="From the input closing an epoch to the output frontier passing it: the dataflow's own processing delay."),
    panel("Input delay p99: mirror committed / dataflow input", [(quant(0.99, "inkstream_mirror_event_delay_seconds"), "mirror committed"), (quant(0.99, "inkstream_dataflow_input_delay_seconds"), "dataflow input")], "s",
          desc="Wall clock minus the event time of each batch's oldest event: when the mirror's round is committed to Kafka, and when the dataflow takes the batch. The gap between them is the topics and the source's fetch."),
    panel("State by operator", [(f"sum by (operator) ({g('inkstream_dataflow_state_keys')})", "{{operator}}")], "short", desc="Keys or entries held, all workers."),
    panel("Late events /s by type", [(rate("inkstream_dataflow_late_events_total", "type"), "{{type}}")], "ops"),
    panel("Dead letters /s by reason", [(rate("inkstream_dataflow_dead_letters_total", "reason"), "{{reason}}")], "ops"),
    panel("Duplicates dropped /s", [(rate("inkstream_dataflow_duplicate_events_total"), "duplicates")], "ops"),
], ["dataflow"])

build("inkstream-fanout", "inkstream / Fanout",
      "WebSocket fanout: connections, channels, messages, slow clients and recovery.", [
    panel("Connections by path", [(f"sum by (path) ({g('inkstream_ws_connections')})", "{{path}}")], "short"),
    panel("Channels and subscriptions", [(f"sum({g('inkstream_ws_channels')})", "channels"), (f"sum({g('inkstream_ws_subscribers')})", "subscriptions"),
                                         (f"sum({g('inkstream_ws_history_channels')})", "channels with history")], "short"),
    panel("Messages out /s by path", [(rate("inkstream_ws_messages_out_total", "path"), "{{path}}")], "ops"),
    panel("Bytes out /s by path", [(rate("inkstream_ws_bytes_out_total", "path"), "{{path}}")], "Bps"),
    panel("Slow-client disconnects /s", [(rate("inkstream_ws_slow_disconnects_total", "path"), "{{path}}")], "ops", desc="Clients closed with 4008 because their queue overflowed."),
    panel("Coalesced presence frames /s", [(rate("inkstream_ws_coalesced_total", "path"), "{{path}}")], "ops"),
    panel("Recoveries /s by outcome", [(rate("inkstream_ws_recoveries_total", "outcome"), "{{outcome}}")], "ops"),
], ["fanout", "websocket"])

build("inkstream-notifications", "inkstream / Notifications",
      "Notification deliveries by priority, channel and outcome; latency and backlog.", [
    panel("Deliveries /s by outcome", [(rate("inkstream_notifications_total", "outcome"), "{{outcome}}")], "ops"),
    panel("Deliveries /s by channel", [(rate("inkstream_notifications_total", "channel", 'outcome="delivered"'), "{{channel}}")], "ops"),
    panel("Deliveries /s by priority", [(rate("inkstream_notifications_total", "priority", 'outcome="delivered"'), "{{priority}}")], "ops"),
    panel("Dead-lettered /s", [(rate("inkstream_notifications_total", "channel", 'outcome="dead_lettered"'), "{{channel}}")], "ops"),
    panel("Delivery latency p99 by channel", [(quant(0.99, "inkstream_notification_delivery_seconds", "channel"), "{{channel}}")], "s"),
    panel("Pending deliveries", [(f"sum({g('inkstream_notification_pending')})", "pending")], "short", desc="Retries, held (quiet hours, flow) and digest queue."),
], ["notifications"])


KS = 'type="writing.keystroke"'
SS = 'type="writing.session_started"'
SESS = 'operator="Sessions"'
PRES = 'operator="Presence"'
W = 'type=~"writing[.].*"'
C = 'type=~"collaboration[.].*"'
P = 'type=~"publishing[.].*"'
SF = 'type=~"writing[.](session|flow).*"'
AL = 'type=~"analytics[.](threshold_crossed|anomaly_detected|alert_triggered)"'
build("inkstream-writing-activity", "inkstream / Writing activity",
      "For the product team: how much writing and collaboration is happening right now.", [
    panel("Keystroke batches /min", [(rate("inkstream_ingest_events_accepted_total", sel=KS) + " * 60", "keystrokes")], "short", "stat", "Accepted writing.keystroke events per minute.", 6, 4),
    panel("Writers with state", [("sum(" + g("inkstream_dataflow_state_keys", SESS) + ")", "writers")], "short", "stat", "Users the sessions operator holds state for (active or recently active).", 6, 4),
    panel("Sessions started /h", [(rate("inkstream_dataflow_derived_events_total", sel=SS, win="1h") + " * 3600", "sessions")], "short", "stat", "Writing sessions the dataflow opened over the last hour.", 6, 4),
    panel("Live viewers", [("sum(" + g("inkstream_ws_connections") + ")", "connections")], "short", "stat", "Open WebSocket connections (all paths).", 6, 4),
    panel("Writing events /s by type", [(rate("inkstream_ingest_events_accepted_total", "type", W), "{{type}}")], "ops"),
    panel("Collaboration events /s by type", [(rate("inkstream_ingest_events_accepted_total", "type", C), "{{type}}")], "ops"),
    panel("Sessions and flow /min", [(rate("inkstream_dataflow_derived_events_total", "type", SF) + " * 60", "{{type}}")], "short"),
    panel("Publishing events /s by type", [(rate("inkstream_ingest_events_accepted_total", "type", P), "{{type}}")], "ops"),
    panel("Analytics alerts /min", [(rate("inkstream_dataflow_derived_events_total", "type", AL) + " * 60", "{{type}}")], "short"),
    panel("Presence pairs", [("sum(" + g("inkstream_dataflow_state_keys", PRES) + ")", "pairs")], "short", desc="(user, document) presence pairs held."),
], ["product", "writing"])
