//! The SQLite and PostgreSQL migration sets are written twice (the dialects differ in a few type
//! names), so they can drift apart. This test migrates a fresh database of each kind and
//! compares what came out: the same tables, columns (type, nullability, default), primary keys,
//! indexes and foreign keys, after mapping each dialect's type names to one vocabulary.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Backend, TestApp};

/// One column: its type in a shared vocabulary, whether it may be NULL, its default.
type Column = (String, bool, Option<String>);

#[derive(Debug, Default, PartialEq, Eq)]
struct Table {
    columns: BTreeMap<String, Column>,
    primary_key: Vec<String>,
    /// Indexes other than the primary key's: their columns in order, and whether unique.
    indexes: BTreeSet<(Vec<String>, bool)>,
    /// Foreign keys: (column, referenced table, referenced column, on delete).
    foreign_keys: BTreeSet<(String, String, String, String)>,
}

type Schema = BTreeMap<String, Table>;

/// The shared vocabulary: both dialects store times and counters as 64-bit integers.
fn type_name(declared: &str) -> String {
    match declared.to_ascii_lowercase().as_str() {
        "integer" | "bigint" => "integer".into(),
        "blob" | "bytea" => "bytes".into(),
        "text" => "text".into(),
        "json" => "json".into(),
        other => panic!("a column type the migration test does not know: {other}"),
    }
}

/// A default as written, without PostgreSQL's casts (`'x'::text` is `'x'`).
fn default_value(raw: Option<&str>) -> Option<String> {
    raw.map(|d| d.split("::").next().unwrap_or(d).trim().to_owned())
}

fn text(cell: &Option<String>) -> String {
    cell.clone().unwrap_or_default()
}

async fn sqlite_schema(app: &TestApp) -> Schema {
    let mut schema = Schema::new();
    for row in app
        .raw_rows(
            "SELECT m.name, p.name, p.type, p.\"notnull\", p.dflt_value, p.pk \
             FROM sqlite_master m JOIN pragma_table_info(m.name) p \
             WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite_%' AND m.name NOT LIKE '_sqlx%' \
             ORDER BY m.name, p.pk, p.cid",
        )
        .await
    {
        let table = schema.entry(text(&row[0])).or_default();
        let not_null = text(&row[3]) == "1" || text(&row[5]) != "0";
        table.columns.insert(
            text(&row[1]),
            (
                type_name(&text(&row[2])),
                !not_null,
                default_value(row[4].as_deref()),
            ),
        );
        if text(&row[5]) != "0" {
            table.primary_key.push(text(&row[1]));
        }
    }
    let mut indexes: BTreeMap<(String, String), (Vec<String>, bool)> = BTreeMap::new();
    for row in app
        .raw_rows(
            "SELECT m.name, il.name, il.\"unique\", ii.name \
             FROM sqlite_master m JOIN pragma_index_list(m.name) il \
             JOIN pragma_index_info(il.name) ii \
             WHERE m.type = 'table' AND m.name NOT LIKE '_sqlx%' AND il.origin <> 'pk' \
             ORDER BY m.name, il.name, ii.seqno",
        )
        .await
    {
        let index = indexes
            .entry((text(&row[0]), text(&row[1])))
            .or_insert((Vec::new(), text(&row[2]) == "1"));
        index.0.push(text(&row[3]));
    }
    for ((table, _), index) in indexes {
        schema.entry(table).or_default().indexes.insert(index);
    }
    for row in app
        .raw_rows(
            "SELECT m.name, f.\"from\", f.\"table\", f.\"to\", f.on_delete \
             FROM sqlite_master m JOIN pragma_foreign_key_list(m.name) f \
             WHERE m.type = 'table'",
        )
        .await
    {
        schema
            .entry(text(&row[0]))
            .or_default()
            .foreign_keys
            .insert((
                text(&row[1]),
                text(&row[2]),
                text(&row[3]),
                text(&row[4]).to_ascii_uppercase(),
            ));
    }
    schema
}

async fn postgres_schema(app: &TestApp) -> Schema {
    let mut schema = Schema::new();
    for row in app
        .raw_rows(
            "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text, \
                    column_default::text \
             FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name NOT LIKE '\\_sqlx%' \
             ORDER BY table_name, ordinal_position",
        )
        .await
    {
        schema.entry(text(&row[0])).or_default().columns.insert(
            text(&row[1]),
            (
                type_name(&text(&row[2])),
                text(&row[3]) == "YES",
                default_value(row[4].as_deref()),
            ),
        );
    }
    for row in app
        .raw_rows(
            "SELECT t.relname::text, ic.relname::text, \
                    CASE WHEN i.indisprimary THEN 'pk' WHEN i.indisunique THEN 'u' ELSE 'c' END, \
                    a.attname::text \
             FROM pg_index i \
             JOIN pg_class t ON t.oid = i.indrelid \
             JOIN pg_class ic ON ic.oid = i.indexrelid \
             JOIN pg_namespace n ON n.oid = t.relnamespace \
             CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum \
             WHERE n.nspname = current_schema() AND t.relname NOT LIKE '\\_sqlx%' \
             ORDER BY t.relname, ic.relname, k.ord",
        )
        .await
        .chunk_by(|a, b| a[0] == b[0] && a[1] == b[1])
    {
        let table = schema.entry(text(&row[0][0])).or_default();
        let columns: Vec<String> = row.iter().map(|r| text(&r[3])).collect();
        match text(&row[0][2]).as_str() {
            "pk" => table.primary_key = columns,
            kind => {
                table.indexes.insert((columns, kind == "u"));
            }
        }
    }
    for row in app
        .raw_rows(
            "SELECT kcu.table_name::text, kcu.column_name::text, ref.table_name::text, \
                    ref.column_name::text, rc.delete_rule::text \
             FROM information_schema.referential_constraints rc \
             JOIN information_schema.key_column_usage kcu \
               ON kcu.constraint_schema = rc.constraint_schema \
              AND kcu.constraint_name = rc.constraint_name \
             JOIN information_schema.key_column_usage ref \
               ON ref.constraint_schema = rc.unique_constraint_schema \
              AND ref.constraint_name = rc.unique_constraint_name \
              AND ref.ordinal_position = kcu.position_in_unique_constraint \
             WHERE rc.constraint_schema = current_schema()",
        )
        .await
    {
        schema
            .entry(text(&row[0]))
            .or_default()
            .foreign_keys
            .insert((text(&row[1]), text(&row[2]), text(&row[3]), text(&row[4])));
    }
    schema
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_and_postgres_migrations_make_the_same_schema() {
    let Some(postgres) = Backend::postgres() else {
        return;
    };
    let sqlite = sqlite_schema(&TestApp::start(Backend::Sqlite).await).await;
    let postgres = postgres_schema(&TestApp::start(postgres).await).await;
    // The comparison means something only if the reading worked.
    let users = &sqlite["users"];
    assert_eq!(users.primary_key, ["id"]);
    assert_eq!(users.columns["email"], ("text".into(), false, None));
    assert!(
        users.indexes.contains(&(vec!["email".into()], true)),
        "{users:?}"
    );
    assert!(!sqlite["sessions"].foreign_keys.is_empty());
    let tables = |s: &Schema| s.keys().cloned().collect::<Vec<_>>();
    assert_eq!(tables(&sqlite), tables(&postgres), "the same tables");
    for (name, table) in &sqlite {
        assert_eq!(
            table, &postgres[name],
            "table {name} differs between the dialects"
        );
    }
}
