//! The dependency rules of `ARCHITECTURE.md` (section "Invariants"), checked against the
//! resolved dependency graph that `cargo metadata` reports for the whole workspace.
//!
//! The graph is read with `--all-features` (optional dependencies count) and without
//! `--filter-platform` (the dependencies of every target platform count: a rule holds on
//! Windows and macOS too). Cargo unifies features across the workspace when it reports the
//! graph, so a rule may fail for a crate that only pulls the forbidden package in because
//! another member turned a feature on; that errs on the strict side.
//!
//! Each rule is a `check_*` function that returns the violations it finds; the `#[test]`s run
//! them on the real graph, and the tests in [`the_checks_can_fail`] run them on a copy of the
//! graph with one invariant broken by hand and expect a violation, so that a rule cannot pass
//! vacuously (a renamed crate, a typo in a name).
//!
//! One more rule is about the build rather than the architecture: the features of every shared
//! package are the same under each command, read from `cargo tree` (see
//! [`one_build_serves_every_command`]).
//!
//! Changing an allow-list here is a deliberate change of the architecture: update
//! `ARCHITECTURE.md` with it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::OnceLock;

use serde_json::Value;

const PROTOCOL: &str = "lockstep-protocol";
const CLOUD: &str = "lockstep-cloud";
const CORE: &str = "lockstep-core";
const CLI: &str = "lockstep-cli";
const DESKTOP: &str = "lockstep-desktop";
const XTASK: &str = "xtask";

/// Rule (a): the only normal dependencies of `lockstep-protocol`, as in its `Cargo.toml`.
const PROTOCOL_DEPENDENCIES: &[&str] = &["serde", "serde_json", "time", "uuid"];

/// Rule (b): every direct dependency of a workspace member on the server stack (see
/// [`is_server_stack`]), of any kind. Only the cloud itself has one as a normal dependency; the
/// others start an embedded server in their tests (`lockstep_cloud::embedded`) and read its
/// SQLite database there.
const SERVER_STACK_USERS: &[(&str, &str, Kind)] = &[
    (CLOUD, "axum", Kind::Normal),
    (CLOUD, "sqlx", Kind::Normal),
    (CORE, CLOUD, Kind::Dev),
    (CORE, "sqlx", Kind::Dev),
    (CLI, CLOUD, Kind::Dev),
    (CLI, "sqlx", Kind::Dev),
    (DESKTOP, CLOUD, Kind::Dev),
];

/// Rule (c): the front ends, which reach the server only through `lockstep-core`.
const FRONT_ENDS: &[&str] = &[DESKTOP, CLI];

/// The server and the HTTP framework and database layer it is built on.
fn is_server_stack(name: &str) -> bool {
    name == CLOUD
        || name == "axum"
        || name.starts_with("axum-")
        || name == "sqlx"
        || name.starts_with("sqlx-")
}

/// Tauri and the windowing crates it is built on.
fn is_tauri(name: &str) -> bool {
    name == "tauri" || name.starts_with("tauri-") || name == "wry" || name == "tao"
}

// ---------------------------------------------------------------------------------------------
// The rules.
// ---------------------------------------------------------------------------------------------

#[test]
fn protocol_depends_only_on_its_allow_list_and_on_no_workspace_crate() {
    pass(check_protocol_is_pure(graph()));
}

#[test]
fn only_the_listed_crates_depend_directly_on_the_server_stack() {
    pass(check_server_stack_users(graph()));
}

#[test]
fn no_crate_but_the_cloud_pulls_in_the_server_stack_through_normal_dependencies() {
    pass(check_server_stack_stays_in_the_cloud(graph()));
}

#[test]
fn front_ends_depend_on_core_and_not_on_the_cloud() {
    pass(check_front_ends_use_core(graph()));
}

#[test]
fn core_does_not_depend_on_tauri() {
    pass(check_core_without_tauri(graph()));
}

#[test]
fn xtask_depends_on_no_workspace_crate() {
    pass(check_xtask_stands_alone(graph()));
}

/// (f) One build serves every command: the features of each shared package are the same
/// whether cargo resolves with the dev-dependencies (`cargo test`, `cargo clippy --all-targets`)
/// or without (`cargo doc --workspace`, `cargo build` of the default members, which `cargo
/// xtask run` does), so switching between them rebuilds nothing.
#[test]
fn one_build_serves_every_command() {
    let with_dev = resolved_features(&["--workspace", "-e", "normal,build,dev"]);
    let docs = resolved_features(&["--workspace", "-e", "normal,build"]);
    let default_members = resolved_features(&["-e", "normal,build"]);
    pass(check_same_features(
        &with_dev,
        &docs,
        "cargo doc --workspace",
    ));
    pass(check_same_features(
        &with_dev,
        &default_members,
        "cargo build (the default members)",
    ));
}

/// Each package (`name vX.Y.Z`) with the feature sets cargo builds it with (one for the build
/// machine, one for the target, when they differ), as `cargo tree <args>` resolves them.
type Features = BTreeMap<String, BTreeSet<String>>;

fn resolved_features(args: &[&str]) -> Features {
    let mut command = vec![
        "tree",
        "--locked",
        "--prefix",
        "none",
        "--format",
        "{p} [{f}]",
    ];
    command.extend_from_slice(args);
    parse_features(&cargo(&command))
}

fn parse_features(tree: &str) -> Features {
    let mut features = Features::new();
    for line in tree.lines() {
        let line = line.trim_end_matches(" (*)");
        let Some((package, list)) = line.rsplit_once(" [") else {
            continue;
        };
        let package = package.trim_end_matches(" (proc-macro)");
        features
            .entry(package.to_owned())
            .or_default()
            .insert(list.trim_end_matches(']').to_owned());
    }
    features
}

fn check_same_features(with_dev: &Features, other: &Features, command: &str) -> Result<(), String> {
    let problems: Vec<String> = other
        .iter()
        .filter_map(|(package, features)| {
            let tested = with_dev.get(package)?;
            (tested != features).then(|| {
                format!("{package}: {features:?} under `{command}`, {tested:?} under `cargo test`")
            })
        })
        .collect();
    verdict(
        &format!(
            "a package has other features under `{command}` than under `cargo test`, so the two \
             build it twice and switching rebuilds everything above it: name the feature the \
             dev-dependency turns on in the normal dependencies too (see \"One build\" in the \
             root Cargo.toml)"
        ),
        problems,
    )
}

/// (a) `lockstep-protocol` is plain data and pure functions.
fn check_protocol_is_pure(g: &Graph) -> Result<(), String> {
    let rule = format!(
        "lockstep-protocol's normal dependencies are exactly {} (PROTOCOL_DEPENDENCIES in \
         xtask/tests/dependencies.rs), and it depends on no other workspace crate",
        PROTOCOL_DEPENDENCIES.join(", ")
    );
    let protocol = g.member(PROTOCOL);
    let mut problems = Vec::new();
    let normal: BTreeSet<&str> = g
        .direct(protocol)
        .filter(|(_, kinds)| kinds.contains(&Kind::Normal))
        .map(|(to, _)| g.name(to))
        .collect();
    let allowed: BTreeSet<&str> = PROTOCOL_DEPENDENCIES.iter().copied().collect();
    for extra in normal.difference(&allowed) {
        problems.push(format!(
            "`{extra}` is a normal dependency but not on the allow-list"
        ));
    }
    for missing in allowed.difference(&normal) {
        problems.push(format!(
            "`{missing}` is on the allow-list but no longer a dependency (shorten the list)"
        ));
    }
    for (to, kinds) in g.direct(protocol) {
        if g.is_member(to) {
            problems.push(format!(
                "it depends on the workspace crate `{}` ({})",
                g.name(to),
                describe(kinds)
            ));
        }
    }
    for path in g.paths_from(protocol, &[Kind::Normal], |name| g.is_member_name(name)) {
        if path.len() > 2 {
            problems.push(format!(
                "it reaches a workspace crate: {}",
                path.join(" → ")
            ));
        }
    }
    verdict(&rule, problems)
}

/// (b), direct: who may name the server stack in a `Cargo.toml`, and with which kind.
fn check_server_stack_users(g: &Graph) -> Result<(), String> {
    const RULE: &str = "only lockstep-cloud has axum and sqlx as normal dependencies; other \
                        crates name the server stack only as dev-dependencies, and only where \
                        listed (SERVER_STACK_USERS in xtask/tests/dependencies.rs)";
    let allowed: BTreeSet<(&str, &str, Kind)> = SERVER_STACK_USERS.iter().copied().collect();
    let mut found = BTreeSet::new();
    let mut problems = Vec::new();
    for (member, &from) in &g.members {
        for (to, kinds) in g.direct(from) {
            let name = g.name(to);
            if !is_server_stack(name) {
                continue;
            }
            for &kind in kinds {
                let entry = (member.as_str(), name, kind);
                if allowed.contains(&entry) {
                    found.insert(entry);
                } else {
                    problems.push(format!(
                        "`{member}` has `{name}` as a {} dependency",
                        kind.as_str()
                    ));
                }
            }
        }
    }
    for (member, name, kind) in allowed.difference(&found) {
        problems.push(format!(
            "`{member}` no longer has `{name}` as a {} dependency (shorten the list)",
            kind.as_str()
        ));
    }
    verdict(RULE, problems)
}

/// (b), transitive: the server stack stays out of every other crate's normal dependencies.
fn check_server_stack_stays_in_the_cloud(g: &Graph) -> Result<(), String> {
    const RULE: &str = "no workspace crate but lockstep-cloud has lockstep-cloud, axum or sqlx \
                        among its normal dependencies, directly or transitively";
    let mut problems = Vec::new();
    for (member, &from) in &g.members {
        if member == CLOUD {
            continue;
        }
        for path in g.paths_from(from, &[Kind::Normal], is_server_stack) {
            problems.push(path.join(" → "));
        }
    }
    verdict(RULE, problems)
}

/// (c) The front ends go through `lockstep-core`.
fn check_front_ends_use_core(g: &Graph) -> Result<(), String> {
    const RULE: &str = "lockstep-desktop and lockstep-cli have lockstep-core as a normal \
                        dependency, and lockstep-cloud among none of their normal dependencies";
    let mut problems = Vec::new();
    for &front_end in FRONT_ENDS {
        let from = g.member(front_end);
        let uses_core = g
            .direct(from)
            .any(|(to, kinds)| g.name(to) == CORE && kinds.contains(&Kind::Normal));
        if !uses_core {
            problems.push(format!(
                "`{front_end}` has no normal dependency on `{CORE}`"
            ));
        }
        for path in g.paths_from(from, &[Kind::Normal], |name| name == CLOUD) {
            problems.push(path.join(" → "));
        }
    }
    verdict(RULE, problems)
}

/// (d) The engine knows nothing of Tauri: not in its code, its tests or its build script.
fn check_core_without_tauri(g: &Graph) -> Result<(), String> {
    const RULE: &str = "lockstep-core depends on no tauri crate (tauri, tauri-*, wry, tao), \
                        through dependencies of any kind";
    let core = g.member(CORE);
    let mut problems = BTreeSet::new();
    // Its own dependencies of every kind, then what they need to build and run.
    for (first, kinds) in g.direct(core) {
        if is_tauri(g.name(first)) {
            problems.insert(format!("{CORE} → {} ({})", g.name(first), describe(kinds)));
        }
        for path in g.paths_from(first, &[Kind::Normal, Kind::Build], is_tauri) {
            problems.insert(format!("{CORE} → {}", path.join(" → ")));
        }
    }
    verdict(RULE, problems)
}

/// xtask builds on its own, whatever state the code it checks is in.
fn check_xtask_stands_alone(g: &Graph) -> Result<(), String> {
    const RULE: &str = "xtask depends on no workspace crate, with dependencies of any kind";
    let xtask = g.member(XTASK);
    let problems = g
        .direct(xtask)
        .filter(|(to, _)| g.is_member(*to))
        .map(|(to, kinds)| format!("`{}` ({})", g.name(to), describe(kinds)));
    verdict(RULE, problems)
}

// ---------------------------------------------------------------------------------------------
// Every rule, broken by hand, must be reported.
// ---------------------------------------------------------------------------------------------

mod the_checks_can_fail {
    use super::*;

    /// A copy of the real graph with one change.
    fn with(change: impl FnOnce(&mut Graph)) -> Graph {
        let mut g = graph().clone();
        change(&mut g);
        g
    }

    fn fails(result: Result<(), String>, mentioning: &str) {
        match result {
            Ok(()) => panic!("the check passed, but the graph breaks its rule ({mentioning})"),
            Err(message) => assert!(
                message.contains(mentioning),
                "the check failed without naming `{mentioning}`:\n{message}"
            ),
        }
    }

    #[test]
    fn one_build_rule() {
        let tested = parse_features(
            "serde_json v1.0.1 [alloc,default,std,unbounded_depth]\n\
             syn v2.0.1 [full] (*)\n\
             syn v2.0.1 [fold,full]\n\
             proptest v1.0.0 [std]\n",
        );
        let built = parse_features(
            "serde_json v1.0.1 [alloc,default,std]\nsyn v2.0.1 [full]\nsyn v2.0.1 [fold,full]\n",
        );
        fails(
            check_same_features(&tested, &built, "cargo build"),
            "serde_json v1.0.1",
        );
        let built = parse_features("syn v2.0.1 [fold,full] (*)\nsyn v2.0.1 [full]\n");
        pass(check_same_features(&tested, &built, "cargo build"));
    }

    #[test]
    fn protocol_rule() {
        let g = with(|g| g.add_edge(PROTOCOL, "tokio", Kind::Normal));
        fails(check_protocol_is_pure(&g), "`tokio` is a normal dependency");
        let g = with(|g| g.remove_edge(PROTOCOL, "uuid"));
        fails(check_protocol_is_pure(&g), "`uuid` is on the allow-list");
        let g = with(|g| g.add_edge(PROTOCOL, CORE, Kind::Dev));
        fails(
            check_protocol_is_pure(&g),
            "workspace crate `lockstep-core`",
        );
    }

    #[test]
    fn server_stack_rules() {
        let g = with(|g| g.add_edge("lockstep-bench", "sqlx", Kind::Dev));
        fails(
            check_server_stack_users(&g),
            "`lockstep-bench` has `sqlx` as a dev",
        );
        let g = with(|g| g.add_edge(CORE, "axum", Kind::Normal));
        fails(check_server_stack_users(&g), "`lockstep-core` has `axum`");
        fails(
            check_server_stack_stays_in_the_cloud(&g),
            "lockstep-core → axum",
        );
        let g = with(|g| g.remove_edge(DESKTOP, CLOUD));
        fails(
            check_server_stack_users(&g),
            "no longer has `lockstep-cloud`",
        );
        // Through a third-party crate, which no `Cargo.toml` of the workspace shows.
        let g = with(|g| g.add_edge("reqwest", "sqlx", Kind::Normal));
        fails(
            check_server_stack_stays_in_the_cloud(&g),
            "lockstep-cli → lockstep-core → reqwest → sqlx",
        );
    }

    #[test]
    fn front_end_rule() {
        let g = with(|g| g.add_edge(DESKTOP, CLOUD, Kind::Normal));
        fails(
            check_front_ends_use_core(&g),
            "lockstep-desktop → lockstep-cloud",
        );
        let g = with(|g| g.remove_edge(CLI, CORE));
        fails(
            check_front_ends_use_core(&g),
            "`lockstep-cli` has no normal dependency",
        );
    }

    #[test]
    fn core_tauri_rule() {
        let g = with(|g| g.add_edge(CORE, "tauri", Kind::Dev));
        fails(check_core_without_tauri(&g), "lockstep-core → tauri");
        let g = with(|g| g.add_edge("keyring-core", "tauri-utils", Kind::Normal));
        fails(check_core_without_tauri(&g), "keyring-core → tauri-utils");
    }

    #[test]
    fn xtask_rule() {
        let g = with(|g| g.add_edge(XTASK, PROTOCOL, Kind::Dev));
        fails(check_xtask_stands_alone(&g), "`lockstep-protocol` (dev)");
    }
}

// ---------------------------------------------------------------------------------------------
// The graph.
// ---------------------------------------------------------------------------------------------

/// How a package depends on another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Normal,
    Dev,
    Build,
}

impl Kind {
    /// A `dep_kinds[].kind` of `cargo metadata`: `null` (normal), `"dev"` or `"build"`. A kind
    /// this test does not know counts as normal: strict.
    fn from_cargo(kind: &Value) -> Kind {
        match kind.as_str() {
            Some("dev") => Kind::Dev,
            Some("build") => Kind::Build,
            _ => Kind::Normal,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Kind::Normal => "normal",
            Kind::Dev => "dev",
            Kind::Build => "build",
        }
    }
}

/// The resolved dependency graph, by package index.
#[derive(Debug, Clone)]
struct Graph {
    /// Each package's name.
    names: Vec<String>,
    /// The workspace members, by name.
    members: BTreeMap<String, usize>,
    /// Each package's dependencies, with their kinds.
    edges: Vec<BTreeMap<usize, BTreeSet<Kind>>>,
}

/// The graph of this workspace, read once per test run.
fn graph() -> &'static Graph {
    static GRAPH: OnceLock<Graph> = OnceLock::new();
    GRAPH.get_or_init(|| {
        let out = cargo(&[
            "metadata",
            "--format-version",
            "1",
            "--all-features",
            "--locked",
        ]);
        let metadata: Value = serde_json::from_str(&out).expect("`cargo metadata` prints JSON");
        Graph::from_metadata(&metadata)
    })
}

/// Runs `$CARGO` (set by `cargo test`, so the toolchain is the one under test) in the workspace
/// root and returns what it printed; panics with its errors if it fails.
fn cargo(args: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace root");
    let out = std::process::Command::new(env!("CARGO"))
        .args(args)
        .current_dir(root)
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "`cargo {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("cargo prints UTF-8")
}

impl Graph {
    /// From `cargo metadata --format-version 1` (its `packages`, `workspace_members` and
    /// `resolve.nodes[].deps[].dep_kinds`).
    fn from_metadata(metadata: &Value) -> Graph {
        let list = |value: &Value| value.as_array().cloned().unwrap_or_default();
        let text = |value: &Value| value.as_str().unwrap_or_default().to_owned();
        let packages = list(&metadata["packages"]);
        let index: HashMap<String, usize> = packages
            .iter()
            .enumerate()
            .map(|(i, package)| (text(&package["id"]), i))
            .collect();
        let names: Vec<String> = packages.iter().map(|p| text(&p["name"])).collect();
        let members = list(&metadata["workspace_members"])
            .iter()
            .map(|id| {
                let i = index[&text(id)];
                (names[i].clone(), i)
            })
            .collect();
        let mut edges = vec![BTreeMap::new(); packages.len()];
        let nodes = list(&metadata["resolve"]["nodes"]);
        assert!(
            !nodes.is_empty(),
            "`cargo metadata` resolved the dependencies"
        );
        for node in &nodes {
            let from: &mut BTreeMap<usize, BTreeSet<Kind>> = &mut edges[index[&text(&node["id"])]];
            for dep in list(&node["deps"]) {
                let kinds = from.entry(index[&text(&dep["pkg"])]).or_default();
                kinds.extend(
                    list(&dep["dep_kinds"])
                        .iter()
                        .map(|k| Kind::from_cargo(&k["kind"])),
                );
            }
        }
        Graph {
            names,
            members,
            edges,
        }
    }

    fn name(&self, package: usize) -> &str {
        &self.names[package]
    }

    fn member(&self, name: &str) -> usize {
        *self.members.get(name).unwrap_or_else(|| {
            panic!(
                "no workspace member is named `{name}`: if it was renamed, update \
                 xtask/tests/dependencies.rs and ARCHITECTURE.md"
            )
        })
    }

    fn is_member(&self, package: usize) -> bool {
        self.members.values().any(|&m| m == package)
    }

    fn is_member_name(&self, name: &str) -> bool {
        self.members.contains_key(name)
    }

    /// The direct dependencies of `from`, with their kinds.
    fn direct(&self, from: usize) -> impl Iterator<Item = (usize, &BTreeSet<Kind>)> {
        self.edges[from].iter().map(|(&to, kinds)| (to, kinds))
    }

    /// The shortest path (as names, `from` first) to each package reachable from `from` along
    /// edges of the given kinds whose name matches `target`.
    fn paths_from(
        &self,
        from: usize,
        follow: &[Kind],
        target: impl Fn(&str) -> bool,
    ) -> Vec<Vec<String>> {
        let mut parent: HashMap<usize, usize> = HashMap::new();
        let mut queue = VecDeque::from([from]);
        let mut found = Vec::new();
        while let Some(at) = queue.pop_front() {
            for (to, kinds) in self.direct(at) {
                if to == from
                    || parent.contains_key(&to)
                    || !kinds.iter().any(|k| follow.contains(k))
                {
                    continue;
                }
                parent.insert(to, at);
                queue.push_back(to);
                if target(self.name(to)) {
                    found.push(to);
                }
            }
        }
        found
            .into_iter()
            .map(|to| {
                let mut path = vec![to];
                while let Some(&up) = parent.get(path.last().unwrap_or(&from)) {
                    path.push(up);
                }
                path.iter()
                    .rev()
                    .map(|&p| self.name(p).to_owned())
                    .collect()
            })
            .collect()
    }

    /// Every package with this name (several versions may be in the graph).
    fn named(&self, name: &str) -> Vec<usize> {
        let found: Vec<usize> = (0..self.names.len())
            .filter(|&i| self.names[i] == name)
            .collect();
        assert!(!found.is_empty(), "no package named `{name}` in the graph");
        found
    }

    /// Adds a dependency of `kind` from every package named `from` to a package named `to`.
    fn add_edge(&mut self, from: &str, to: &str, kind: Kind) {
        let to = self.named(to)[0];
        for from in self.named(from) {
            self.edges[from].entry(to).or_default().insert(kind);
        }
    }

    /// Removes every dependency of packages named `from` on packages named `to`.
    fn remove_edge(&mut self, from: &str, to: &str) {
        let to: BTreeSet<usize> = self.named(to).into_iter().collect();
        for from in self.named(from) {
            self.edges[from].retain(|dep, _| !to.contains(dep));
        }
    }
}

fn describe(kinds: &BTreeSet<Kind>) -> String {
    kinds
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn verdict(rule: &str, problems: impl IntoIterator<Item = String>) -> Result<(), String> {
    let problems: Vec<String> = problems.into_iter().collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "architecture rule broken (ARCHITECTURE.md, Invariants): {rule}\n  - {}",
            problems.join("\n  - ")
        ))
    }
}

fn pass(result: Result<(), String>) {
    if let Err(message) = result {
        panic!("{message}");
    }
}
