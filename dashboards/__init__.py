"""cellwatch.dashboards: Grafana dashboards, alert rules and provisioning as code, and the sync client."""
