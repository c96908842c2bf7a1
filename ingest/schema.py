"""The result store's tables: one definition, rendered for PostgreSQL and for SQLite (the embedded default).

Grafana's dashboards and alert rules query these tables, the streaming service writes them with
idempotent upserts on the natural keys, and ``cellwatch demo`` fills the same tables in SQLite.
Times are ``timestamptz`` in PostgreSQL and ISO-8601 UTC text in SQLite; JSON columns are ``jsonb``
in PostgreSQL and text in SQLite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Dialect = Literal["postgresql", "sqlite"]

#: Bumped whenever a table changes; the service migrates by the ``schema_migrations`` table.
SCHEMA_VERSION = 1

_TYPES = {
    "postgresql": {"text": "text", "int": "bigint", "float": "double precision", "bool": "boolean",
                   "time": "timestamptz", "json": "jsonb", "bytes": "bytea"},
    "sqlite": {"text": "TEXT", "int": "INTEGER", "float": "REAL", "bool": "INTEGER",
               "time": "TEXT", "json": "TEXT", "bytes": "BLOB"},
}


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[tuple[str, str, bool], ...]  # (name, generic type, nullable)
    key: tuple[str, ...]
    indexes: tuple[tuple[str, ...], ...] = ()
    doc: str = ""

    @property
    def column_names(self) -> list[str]:
        return [c[0] for c in self.columns]


def _cols(spec: str) -> tuple[tuple[str, str, bool], ...]:
    """'name type[?], ...' -> column tuples; a trailing ? marks a nullable column."""
    out = []
    for part in spec.split(","):
        name, typ = part.split()
        out.append((name, typ.rstrip("?"), typ.endswith("?")))
    return tuple(out)


TABLES: tuple[Table, ...] = (
    Table("readings", _cols(
        "line text, station text, seq int, ts time, cell_id text?, recipe text?, tags json?, sensor_values json"),
        key=("line", "station", "seq"), indexes=(("ts",), ("line", "station", "ts"), ("cell_id",)),
        doc="Every valid reading as received; sensor_values maps sensor -> number."),
    Table("scores", _cols(
        "line text, station text, seq int, ts time, cell_id text?, recipe text?, anomaly_score float, "
        "is_anomaly bool, kind text, top_sensors json?, model_version text, scored_at time"),
        key=("line", "station", "seq"), indexes=(("ts",), ("line", "station", "ts"), ("cell_id",)),
        doc="One row per scored reading. kind: normal | process | data_quality. top_sensors: "
            "[{sensor, actual, expected, contribution}]."),
    Table("incidents", _cols(
        "incident_id text, line text, station text, kind text, severity text, status text, start_ts time, "
        "end_ts time?, peak_score float, peak_ts time, sensors json, n_anomalous int, model_version text, "
        "updated_at time"),
        key=("incident_id",), indexes=(("start_ts",), ("line", "station", "start_ts"), ("status",)),
        doc="Anomalous readings folded into incidents. status: open | closed; severity: "
            "warning | major | critical."),
    Table("cell_predictions", _cols(
        "cell_id text, station text, line text, ts time, defect_probability float, predicted_defect bool, "
        "predicted_type text?, top_features json?, model_version text"),
        key=("cell_id", "station"), indexes=(("ts",), ("line", "ts")),
        doc="A cell's defect prediction after each station it passed (history)."),
    Table("cells", _cols(
        "cell_id text, line text, last_station text?, last_ts time?, defect_probability float?, "
        "predicted_defect bool?, predicted_type text?, top_features json?, model_version text?, "
        "eol_ts time?, capacity_ah float?, dcir_mohm float?, k_value_mv_day float?, grade text?, "
        "defect bool?, defect_type text?, closed bool"),
        key=("cell_id",), indexes=(("last_ts",), ("line", "last_ts"), ("eol_ts",)),
        doc="Latest state per cell; the EOL result is the label and closes the record."),
    Table("dead_letters", _cols(
        "source_topic text, source_partition int, source_offset int, received_at time, reason text, "
        "detail text?, payload bytes?"),
        key=("source_topic", "source_partition", "source_offset"), indexes=(("received_at",), ("reason",)),
        doc="Rejected messages (also on the cellwatch.dlq topic); counts come from GROUP BY reason."),
    Table("model_versions", _cols(
        "name text, version text, in_production bool, created_at time?, promoted_at time?, "
        "threshold float?, metrics json?, loaded_at time"),
        key=("name", "version"), indexes=(("loaded_at",),),
        doc="The model versions the service has loaded; in_production marks the one in use."),
    Table("sensor_bands", _cols(
        "model_version text, line text, station text, recipe text, sensor text, unit text?, "
        "lower float, expected float, upper float, threshold float"),
        key=("model_version", "line", "station", "recipe", "sensor"),
        doc="Expected value and band per sensor from a station model (for the drill-down dashboard); "
            "line and recipe are '*' when the model is shared."),
    Table("pipeline_stats", _cols(
        "worker text, batch_end time, readings int, scored int, rejected int, batch_ms float, "
        "e2e_p50_ms float?, e2e_p99_ms float?, max_lag int, model_version text?"),
        key=("worker", "batch_end"), indexes=(("batch_end",),),
        doc="One row per committed micro-batch: throughput, latency and consumer lag."),
)

TABLE = {t.name: t for t in TABLES}


def create_statements(dialect: Dialect) -> list[str]:
    """``CREATE TABLE/INDEX IF NOT EXISTS`` statements for every table."""
    types = _TYPES[dialect]
    stmts = ["CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT)"]
    for t in TABLES:
        cols = ", ".join(f"{n} {types[ty]}{'' if null else ' NOT NULL'}" for n, ty, null in t.columns)
        stmts.append(f"CREATE TABLE IF NOT EXISTS {t.name} ({cols}, PRIMARY KEY ({', '.join(t.key)}))")
        for idx in t.indexes:
            stmts.append(f"CREATE INDEX IF NOT EXISTS {t.name}_{'_'.join(idx)}_idx ON {t.name} ({', '.join(idx)})")
    return stmts


def upsert_statement(table: str, dialect: Dialect, columns: list[str] | None = None,
                     update: bool = True) -> str:
    """An idempotent insert for ``table``: on a natural-key conflict update the other columns (or do nothing).

    Parameters use the driver's style: ``%s`` for psycopg, ``?`` for sqlite3.
    """
    t = TABLE[table]
    cols = columns or t.column_names
    mark = "%s" if dialect == "postgresql" else "?"
    rest = [c for c in cols if c not in t.key]
    action = ("DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in rest)) if update and rest else "DO NOTHING"
    return (f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join([mark] * len(cols))}) "
            f"ON CONFLICT ({', '.join(t.key)}) {action}")
