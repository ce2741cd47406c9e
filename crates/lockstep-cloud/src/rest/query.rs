//! A PostgREST query evaluated over one user's rows: `select`, column filters
//! (`eq neq gt gte lt lte like ilike is in`, optionally `not.`), `order`, `limit`, `offset`.
//!
//! Every table served here holds a bounded number of rows per user, so the rows are read by
//! user id and the query is applied in memory: one evaluator for every table, and no filter
//! syntax ever reaches SQL.
//!
//! A query is bounded in what it can cost: at most [`MAX_FILTERS`] filters, `in` lists of at
//! most [`MAX_IN_ITEMS`] items, `like` patterns of at most [`MAX_PATTERN_CHARS`] characters,
//! compiled once into an automaton that matches in time linear in the text (the `regex`
//! crate), and callers run [`RowQuery::apply`] off the async workers.

use lockstep_protocol::{errors::RestCode, timestamp::parse_rfc3339};
use std::cmp::Ordering;

use axum::http::StatusCode;
use serde_json::{Map, Value};

use crate::error::ApiError;

/// Most column filters one query may carry.
pub const MAX_FILTERS: usize = 32;
/// Most items of one `in.(…)` list.
pub const MAX_IN_ITEMS: usize = 256;
/// Longest `like`/`ilike` pattern, in characters.
pub const MAX_PATTERN_CHARS: usize = 256;

/// Query parameters that are not column filters.
const RESERVED: &[&str] = &[
    "select",
    "order",
    "limit",
    "offset",
    "on_conflict",
    "columns",
    "apikey",
];

#[derive(Debug, Clone, PartialEq)]
pub struct RowQuery {
    pub select: Option<Vec<String>>,
    pub filters: Vec<Filter>,
    pub order: Vec<OrderTerm>,
    pub limit: Option<usize>,
    pub offset: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub column: String,
    pub negate: bool,
    pub op: Op,
    pub value: String,
    /// The compiled pattern of a `like`/`ilike` filter.
    like: Option<LikePattern>,
}

/// A SQL `LIKE` pattern compiled once: `%` (or PostgREST's `*`) for any run of characters, `_`
/// for one, `\` before a character for that character itself; the whole text must match.
#[derive(Debug, Clone)]
pub struct LikePattern {
    source: String,
    case_insensitive: bool,
    regex: regex::Regex,
}

impl PartialEq for LikePattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.case_insensitive == other.case_insensitive
    }
}

impl LikePattern {
    /// Compiles `pattern`; `None` past [`MAX_PATTERN_CHARS`] (or, never in practice, when the
    /// automaton would be too large).
    pub fn new(pattern: &str, case_insensitive: bool) -> Option<LikePattern> {
        if pattern.chars().count() > MAX_PATTERN_CHARS {
            return None;
        }
        let mut expression = String::from(r"\A(?:");
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            match c {
                '%' | '*' => expression.push_str(".*"),
                '_' => expression.push('.'),
                '\\' => {
                    // A trailing backslash stands for itself, as in PostgreSQL.
                    let literal = chars.next().unwrap_or('\\');
                    expression.push_str(&regex::escape(literal.encode_utf8(&mut [0; 4])));
                }
                c => expression.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
            }
        }
        expression.push_str(r")\z");
        let regex = regex::RegexBuilder::new(&expression)
            .case_insensitive(case_insensitive)
            .dot_matches_new_line(true)
            .build()
            .ok()?;
        Some(LikePattern {
            source: pattern.to_owned(),
            case_insensitive,
            regex,
        })
    }

    pub fn matches(&self, text: &str) -> bool {
        self.regex.is_match(text)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Neq,
    Gt,
    Gte,
    Lt,
    Lte,
    Like,
    Ilike,
    Is,
    In,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OrderTerm {
    pub column: String,
    pub descending: bool,
    pub nulls_first: bool,
}

fn bad_filter(message: String) -> ApiError {
    ApiError::rest(StatusCode::BAD_REQUEST, RestCode::QueryParse, message)
}

fn unknown_column(table: &str, column: &str) -> ApiError {
    ApiError::rest(
        StatusCode::BAD_REQUEST,
        RestCode::UndefinedColumn,
        format!("column {table}.{column} does not exist"),
    )
}

impl RowQuery {
    /// Parses the query string pairs for `table`, whose columns are `columns`.
    pub fn parse(
        pairs: &[(String, String)],
        table: &str,
        columns: &[&str],
    ) -> Result<RowQuery, ApiError> {
        let known = |c: &str| columns.contains(&c);
        let mut query = RowQuery {
            select: None,
            filters: Vec::new(),
            order: Vec::new(),
            limit: None,
            offset: 0,
        };
        for (key, value) in pairs {
            match key.as_str() {
                "select" => {
                    let cols: Vec<String> = value
                        .split(',')
                        .map(|c| c.trim().to_owned())
                        .filter(|c| !c.is_empty())
                        .collect();
                    if cols.iter().any(|c| c == "*") {
                        continue;
                    }
                    if let Some(bad) = cols.iter().find(|c| !known(c)) {
                        return Err(unknown_column(table, bad));
                    }
                    query.select = Some(cols);
                }
                "order" => {
                    for term in value.split(',').filter(|t| !t.is_empty()) {
                        query.order.push(parse_order(term, table, &known)?);
                    }
                }
                "limit" => {
                    query.limit = Some(value.parse().map_err(|_| {
                        bad_filter(format!(
                            "limit must be a non-negative whole number, not {value:?}"
                        ))
                    })?);
                }
                "offset" => {
                    query.offset = value.parse().map_err(|_| {
                        bad_filter(format!(
                            "offset must be a non-negative whole number, not {value:?}"
                        ))
                    })?;
                }
                k if RESERVED.contains(&k) => {}
                column => {
                    if !known(column) {
                        return Err(unknown_column(table, column));
                    }
                    if query.filters.len() == MAX_FILTERS {
                        return Err(bad_filter(format!(
                            "too many filters: a query may carry at most {MAX_FILTERS}"
                        )));
                    }
                    query.filters.push(parse_filter(column, value)?);
                }
            }
        }
        Ok(query)
    }

    /// Whether a row passes every filter.
    pub fn matches(&self, row: &Value) -> bool {
        self.filters
            .iter()
            .all(|f| f.matches(row.get(&f.column).unwrap_or(&Value::Null)))
    }

    /// Filters, orders, pages and projects the rows.
    pub fn apply(&self, rows: Vec<Value>) -> Vec<Value> {
        let mut rows: Vec<Value> = rows.into_iter().filter(|r| self.matches(r)).collect();
        if !self.order.is_empty() {
            rows.sort_by(|a, b| {
                for term in &self.order {
                    let (x, y) = (a.get(&term.column), b.get(&term.column));
                    let ord = match (x.filter(|v| !v.is_null()), y.filter(|v| !v.is_null())) {
                        (None, None) => Ordering::Equal,
                        (None, Some(_)) => {
                            if term.nulls_first {
                                Ordering::Less
                            } else {
                                Ordering::Greater
                            }
                        }
                        (Some(_), None) => {
                            if term.nulls_first {
                                Ordering::Greater
                            } else {
                                Ordering::Less
                            }
                        }
                        (Some(x), Some(y)) => {
                            let o = compare_values(x, y).unwrap_or(Ordering::Equal);
                            if term.descending { o.reverse() } else { o }
                        }
                    };
                    if ord != Ordering::Equal {
                        return ord;
                    }
                }
                Ordering::Equal
            });
        }
        let rows = rows
            .into_iter()
            .skip(self.offset)
            .take(self.limit.unwrap_or(usize::MAX));
        match &self.select {
            None => rows.collect(),
            Some(columns) => rows
                .map(|row| {
                    let mut picked = Map::new();
                    for c in columns {
                        picked.insert(c.clone(), row.get(c).cloned().unwrap_or(Value::Null));
                    }
                    Value::Object(picked)
                })
                .collect(),
        }
    }
}

fn parse_order(
    term: &str,
    table: &str,
    known: &dyn Fn(&str) -> bool,
) -> Result<OrderTerm, ApiError> {
    let mut parts = term.split('.');
    let column = parts.next().unwrap_or_default().to_owned();
    if !known(&column) {
        return Err(unknown_column(table, &column));
    }
    let mut order = OrderTerm {
        column,
        descending: false,
        nulls_first: false,
    };
    let mut nulls_given = false;
    for modifier in parts {
        match modifier {
            "asc" => order.descending = false,
            "desc" => order.descending = true,
            "nullsfirst" => (order.nulls_first, nulls_given) = (true, true),
            "nullslast" => (order.nulls_first, nulls_given) = (false, true),
            other => {
                return Err(bad_filter(format!(
                    "failed to parse order ({term}): unknown modifier {other:?}"
                )));
            }
        }
    }
    if !nulls_given {
        // PostgreSQL's default: nulls sort as if larger than any value.
        order.nulls_first = order.descending;
    }
    Ok(order)
}

fn parse_filter(column: &str, raw: &str) -> Result<Filter, ApiError> {
    let (negate, rest) = match raw.strip_prefix("not.") {
        Some(rest) => (true, rest),
        None => (false, raw),
    };
    let (op, value) = rest.split_once('.').ok_or_else(|| {
        bad_filter(format!(
            "failed to parse filter ({column}={raw}): expected operator.value, e.g. eq.42"
        ))
    })?;
    let op = match op {
        "eq" => Op::Eq,
        "neq" => Op::Neq,
        "gt" => Op::Gt,
        "gte" => Op::Gte,
        "lt" => Op::Lt,
        "lte" => Op::Lte,
        "like" => Op::Like,
        "ilike" => Op::Ilike,
        "is" => Op::Is,
        "in" => Op::In,
        other => {
            return Err(bad_filter(format!(
                "failed to parse filter ({column}={raw}): unknown operator {other:?}; use eq, neq, gt, gte, lt, lte, like, ilike, is or in"
            )));
        }
    };
    if op == Op::Is && !matches!(value, "null" | "true" | "false" | "unknown") {
        return Err(bad_filter(format!(
            "failed to parse filter ({column}={raw}): is takes null, true, false or unknown"
        )));
    }
    if op == Op::In && !(value.starts_with('(') && value.ends_with(')')) {
        return Err(bad_filter(format!(
            "failed to parse filter ({column}={raw}): in takes a list like in.(a,b)"
        )));
    }
    if op == Op::In && parse_list(value).len() > MAX_IN_ITEMS {
        return Err(bad_filter(format!(
            "failed to parse filter on {column}: an in list may hold at most {MAX_IN_ITEMS} items"
        )));
    }
    let like = match op {
        Op::Like | Op::Ilike => {
            Some(LikePattern::new(value, op == Op::Ilike).ok_or_else(|| {
                bad_filter(format!(
                    "failed to parse filter on {column}: a like pattern may be at most \
                 {MAX_PATTERN_CHARS} characters"
                ))
            })?)
        }
        _ => None,
    };
    Ok(Filter {
        column: column.to_owned(),
        negate,
        op,
        value: value.to_owned(),
        like,
    })
}

impl Filter {
    fn matches(&self, cell: &Value) -> bool {
        let result = match self.op {
            Op::Is => match self.value.as_str() {
                "null" | "unknown" => cell.is_null(),
                "true" => *cell == Value::Bool(true),
                _ => *cell == Value::Bool(false),
            },
            _ if cell.is_null() => false,
            Op::Eq => compare_text(cell, &self.value) == Some(Ordering::Equal),
            Op::Neq => compare_text(cell, &self.value).is_some_and(|o| o != Ordering::Equal),
            Op::Gt => compare_text(cell, &self.value) == Some(Ordering::Greater),
            Op::Gte => compare_text(cell, &self.value).is_some_and(|o| o != Ordering::Less),
            Op::Lt => compare_text(cell, &self.value) == Some(Ordering::Less),
            Op::Lte => compare_text(cell, &self.value).is_some_and(|o| o != Ordering::Greater),
            Op::Like | Op::Ilike => self
                .like
                .as_ref()
                .is_some_and(|pattern| pattern.matches(&as_text(cell))),
            Op::In => parse_list(&self.value)
                .iter()
                .any(|item| compare_text(cell, item) == Some(Ordering::Equal)),
        };
        result != self.negate
    }
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Compares a cell with a filter's text, by the cell's type.
fn compare_text(cell: &Value, text: &str) -> Option<Ordering> {
    match cell {
        Value::Number(n) => n.as_f64()?.partial_cmp(&text.parse::<f64>().ok()?),
        Value::Bool(b) => Some(b.cmp(&text.parse::<bool>().ok()?)),
        Value::String(s) => match (parse_rfc3339(s), parse_rfc3339(text)) {
            (Some(a), Some(b)) => Some(a.cmp(&b)),
            _ => Some(s.as_str().cmp(text)),
        },
        _ => Some(cell.to_string().as_str().cmp(text)),
    }
}

fn compare_values(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::String(x), Value::String(y)) => match (parse_rfc3339(x), parse_rfc3339(y)) {
            (Some(a), Some(b)) => Some(a.cmp(&b)),
            _ => Some(x.cmp(y)),
        },
        _ => Some(a.to_string().cmp(&b.to_string())),
    }
}

/// `(a,b,"c,d")` → `["a", "b", "c,d"]`.
fn parse_list(raw: &str) -> Vec<String> {
    let inner = &raw[1..raw.len() - 1];
    let mut items = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in inner.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => items.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    items.push(current);
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const COLS: &[&str] = &["id", "name", "n", "at", "flag"];

    fn q(s: &str) -> Result<RowQuery, ApiError> {
        let pairs: Vec<(String, String)> =
            form_urlencoded::parse(s.as_bytes()).into_owned().collect();
        RowQuery::parse(&pairs, "t", COLS)
    }

    fn rows() -> Vec<Value> {
        vec![
            json!({"id": "a", "name": "Work laptop", "n": 3, "at": "2026-01-01T00:00:00.5Z", "flag": true}),
            json!({"id": "b", "name": "Home desktop", "n": 10, "at": "2026-01-01T00:00:00Z", "flag": false}),
            json!({"id": "c", "name": null, "n": 7, "at": "2026-01-02T00:00:00Z", "flag": null}),
        ]
    }

    fn ids(rows: Vec<Value>) -> Vec<String> {
        rows.iter()
            .map(|r| r["id"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    #[test]
    fn filters_compare_by_type() {
        assert_eq!(ids(q("n=gt.5").expect("parses").apply(rows())), ["b", "c"]);
        assert_eq!(
            ids(q("id=in.(a,c)").expect("parses").apply(rows())),
            ["a", "c"]
        );
        assert_eq!(
            ids(q("name=ilike.*LAPTOP").expect("parses").apply(rows())),
            ["a"]
        );
        assert_eq!(ids(q("name=is.null").expect("parses").apply(rows())), ["c"]);
        assert_eq!(
            ids(q("id=not.eq.a").expect("parses").apply(rows())),
            ["b", "c"]
        );
        assert_eq!(ids(q("flag=is.true").expect("parses").apply(rows())), ["a"]);
        assert_eq!(
            ids(q("at=gt.2026-01-01T00:00:00Z")
                .expect("parses")
                .apply(rows())),
            ["a", "c"]
        );
    }

    #[test]
    fn order_limit_offset_and_select() {
        assert_eq!(
            ids(q("order=at.desc").expect("parses").apply(rows())),
            ["c", "a", "b"]
        );
        assert_eq!(
            ids(q("order=name.asc").expect("parses").apply(rows())),
            ["b", "a", "c"]
        );
        assert_eq!(
            ids(q("order=name.asc.nullsfirst&limit=2")
                .expect("parses")
                .apply(rows())),
            ["c", "b"]
        );
        assert_eq!(
            ids(q("order=n&offset=1").expect("parses").apply(rows())),
            ["c", "b"]
        );
        let picked = q("select=id,n&id=eq.a").expect("parses").apply(rows());
        assert_eq!(picked, vec![json!({"id": "a", "n": 3})]);
    }

    #[test]
    fn bad_queries_name_the_problem() {
        for (query, needle) in [
            ("n=between.1", "unknown operator"),
            ("n=5", "expected operator.value"),
            ("secret=eq.1", "t.secret does not exist"),
            ("select=id,password", "t.password does not exist"),
            ("limit=-1", "limit"),
            ("order=n.sideways", "unknown modifier"),
            ("id=in.a,b", "in takes a list"),
        ] {
            let err = q(query).expect_err(query);
            let message = match err {
                ApiError::Rest {
                    message, status, ..
                } => {
                    assert_eq!(status, StatusCode::BAD_REQUEST);
                    message.to_string()
                }
                other => panic!("unexpected {other:?}"),
            };
            assert!(message.contains(needle), "{query}: {message}");
        }
    }

    fn like(text: &str, pattern: &str, case_insensitive: bool) -> bool {
        LikePattern::new(pattern, case_insensitive)
            .expect("pattern compiles")
            .matches(text)
    }

    #[test]
    fn like_handles_wildcards() {
        assert!(like("abc", "a%c", false));
        assert!(like("abc", "a*c", false));
        assert!(like("abc", "a_c", false));
        assert!(like("abxyzc", "a%c", false));
        assert!(!like("abc", "a%d", false));
        assert!(like("ABC", "a%", true));
        assert!(!like("ABC", "a%", false));
        assert!(like("a\nb", "a_b", false), "_ matches a newline too");
        assert!(like("100%", "100\\%", false));
        assert!(!like("1000", "100\\%", false));
        assert!(like("a.b", "a.b", false), "regex syntax is literal");
        assert!(!like("axb", "a.b", false));
        assert!(like("x(y)+", "x(y)+", false));
    }

    /// The reference: LIKE by dynamic programming over (text, pattern) prefixes, too slow for
    /// the server but plainly right.
    fn like_by_table(text: &str, pattern: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        let pattern: Vec<char> = pattern.chars().collect();
        // matched[j]: the text read so far matches pattern[..j].
        let mut matched = vec![false; pattern.len() + 1];
        matched[0] = true;
        for j in 0..pattern.len() {
            matched[j + 1] = matched[j] && pattern[j] == '%';
        }
        for &t in &text {
            let mut next = vec![false; pattern.len() + 1];
            for j in 0..pattern.len() {
                next[j + 1] = match pattern[j] {
                    '%' => next[j] || matched[j + 1],
                    '_' => matched[j],
                    p => matched[j] && p == t,
                };
            }
            matched = next;
        }
        matched[pattern.len()]
    }

    proptest::proptest! {
        #[test]
        fn like_agrees_with_the_reference(
            text in "[ab%_\\n]{0,12}",
            pattern in "[ab%_]{0,8}",
        ) {
            proptest::prop_assert_eq!(
                like(&text, &pattern, false),
                like_by_table(&text, &pattern),
                "{:?} like {:?}", text, pattern
            );
        }
    }

    #[test]
    fn a_pathological_pattern_over_a_long_text_is_answered() {
        // Backtracking matchers take text x pattern steps per row here.
        let text = "a".repeat(64 * 1024);
        let pattern = format!("{}b", "%a".repeat(MAX_PATTERN_CHARS / 2 - 1));
        assert!(!like(&text, &pattern, true));
        assert!(like(&format!("{text}b"), &pattern, true));
    }

    #[test]
    fn queries_are_bounded_in_what_they_cost() {
        let long = "a".repeat(MAX_PATTERN_CHARS + 1);
        let many = (0..=MAX_IN_ITEMS)
            .map(|i| i.to_string())
            .collect::<Vec<_>>();
        let filters = vec!["n=gt.1"; MAX_FILTERS + 1].join("&");
        for (query, needle) in [
            (format!("name=like.{long}"), "at most 256 characters"),
            (format!("name=ilike.{long}"), "at most 256 characters"),
            (format!("id=in.({})", many.join(",")), "at most 256 items"),
            (filters, "at most 32"),
        ] {
            match q(&query).expect_err(&query) {
                ApiError::Rest {
                    message, status, ..
                } => {
                    assert_eq!(status, StatusCode::BAD_REQUEST);
                    assert!(message.contains(needle), "{message}");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let at_cap = "a".repeat(MAX_PATTERN_CHARS);
        assert!(q(&format!("name=like.{at_cap}")).is_ok());
    }
}
