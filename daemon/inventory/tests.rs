//! Inventory validation tests: a valid base inventory, small edits of it, and one
//! table of bad inventories, each with the line and the message fragment that
//! `check` must report (in the style of rust-analyzer's `check(input, expect)`).

use super::*;

/// A small valid production inventory. Cases edit it, so its line numbers matter:
///
/// ```text
///  1 version             10 stores:              19 grants:
///  2 environment         11   local: {...}       20   schema grant (USAGE)
///  3 state               12 accounts:            21   tables "*" grant
///  4 defaults: {...}     13   etl_nightly:       22   tables [orders, customers]
///  5 databases:          14     database         23   sequences "*" grant
///  6   orders:           15     purpose          24 (first line added by `account_with`)
///  7     engine          16     owner
///  8     url             17     strategy
///  9     password_file   18     schedule
/// ```
const BASE: &str = r#"version: 1
environment: production
state: sqlite:///var/lib/credrotd/state.db
defaults: { schedule: "0 0 3 * * *", overlap: 1h, store: local }
databases:
  orders:
    engine: postgres
    url: postgres://credrotd_admin@db1:5432/orders?sslmode=verify-full
    password_file: secrets/orders
stores:
  local: { kind: file, dir: /run/credrotd/secrets }
accounts:
  etl_nightly:
    database: orders
    purpose: Nightly ETL into the analytics schema
    owner: data-platform
    strategy: ephemeral
    schedule: "0 0 */6 * * *"
    grants:
      - { schema: analytics, privileges: [USAGE] }
      - { schema: analytics, tables: "*", privileges: [select, INSERT] }
      - { schema: public, tables: [orders, customers], privileges: [SELECT] }
      - { schema: analytics, sequences: "*", privileges: [USAGE] }
"#;

/// The line of the account's name in [`BASE`].
const ACCOUNT: u64 = 13;
/// The first line that [`account_with`] adds.
const END: u64 = 24;

/// [`BASE`] with each `(from, to)` replacement applied. Each `from` must occur
/// exactly once, so that a typo in a case cannot silently test the base instead.
fn edit(pairs: &[(&str, &str)]) -> String {
    let mut text = BASE.to_owned();
    for (from, to) in pairs {
        assert_eq!(
            text.matches(from).count(),
            1,
            "edit: {from:?} must occur exactly once in:\n{text}"
        );
        text = text.replacen(from, to, 1);
    }
    text
}

/// [`BASE`] with `lines` added to the end of the account `etl_nightly`.
fn account_with(lines: &str) -> String {
    format!("{BASE}{lines}")
}

/// [`BASE`] in another environment.
fn in_env(env: &str, yaml: &str) -> String {
    assert!(yaml.contains("environment: production\n"));
    yaml.replacen(
        "environment: production\n",
        &format!("environment: {env}\n"),
        1,
    )
}

fn run(yaml: &str) -> Result<Checked, InventoryError> {
    parse(Path::new("inv.yaml"), yaml)
}

fn show(diags: &[Diagnostic]) -> String {
    if diags.is_empty() {
        return "    (none)".into();
    }
    diags
        .iter()
        .map(|d| format!("    {d}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The errors of an inventory that must be invalid, or a description of what
/// happened instead.
fn errors_of(yaml: &str) -> Result<Vec<Diagnostic>, String> {
    match run(yaml) {
        Ok(checked) => Err(format!(
            "expected an invalid inventory, but it parsed; warnings:\n{}",
            show(&checked.warnings)
        )),
        Err(InventoryError::Invalid { errors }) => Ok(errors),
        Err(e) => Err(format!("expected InventoryError::Invalid, got {e:?}")),
    }
}

/// Why `yaml` does not fail with an error at `line` whose message contains
/// `needle`, or `None` when it does.
fn err_mismatch(yaml: &str, line: u64, needle: &str) -> Option<String> {
    let errors = match errors_of(yaml) {
        Ok(errors) => errors,
        Err(why) => return Some(why),
    };
    let well_formed = errors
        .iter()
        .all(|d| d.severity == Severity::Error && d.file == Path::new("inv.yaml") && d.column > 0);
    let found = errors
        .iter()
        .any(|d| d.line == line && d.message.contains(needle));
    if well_formed && found && !errors.is_empty() {
        None
    } else {
        Some(format!(
            "expected an error at line {line} containing {needle:?} (all errors located in inv.yaml, column > 0); got:\n{}",
            show(&errors)
        ))
    }
}

/// Asserts that `yaml` is invalid with an error at `line` containing `needle`.
#[track_caller]
fn check_err(yaml: &str, line: u64, needle: &str) {
    if let Some(why) = err_mismatch(yaml, line, needle) {
        panic!("{why}\n--- inventory ---\n{yaml}");
    }
}

/// Asserts that `yaml` is valid without warnings and returns it.
#[track_caller]
fn check_ok(yaml: &str) -> Checked {
    match run(yaml) {
        Ok(checked) => {
            assert!(
                checked.warnings.is_empty(),
                "expected no warnings; got:\n{}\n--- inventory ---\n{yaml}",
                show(&checked.warnings)
            );
            checked
        }
        Err(InventoryError::Invalid { errors }) => {
            panic!(
                "expected a valid inventory; got:\n{}\n--- inventory ---\n{yaml}",
                show(&errors)
            )
        }
        Err(e) => panic!("expected a valid inventory; got {e:?}"),
    }
}

/// Asserts that `yaml` is valid with a warning at `line` containing `needle`.
#[track_caller]
fn check_warn(yaml: &str, line: u64, needle: &str) -> Checked {
    let checked = match run(yaml) {
        Ok(checked) => checked,
        Err(InventoryError::Invalid { errors }) => {
            panic!(
                "expected a valid inventory with a warning; got:\n{}\n--- inventory ---\n{yaml}",
                show(&errors)
            )
        }
        Err(e) => panic!("expected a valid inventory; got {e:?}"),
    };
    assert!(
        checked
            .warnings
            .iter()
            .all(|d| d.severity == Severity::Warning),
        "warnings must have severity Warning:\n{}",
        show(&checked.warnings)
    );
    assert!(
        checked
            .warnings
            .iter()
            .any(|d| d.line == line && d.column > 0 && d.message.contains(needle)),
        "expected a warning at line {line} containing {needle:?}; got:\n{}\n--- inventory ---\n{yaml}",
        show(&checked.warnings)
    );
    checked
}

struct Case {
    name: &'static str,
    yaml: String,
    line: u64,
    needle: &'static str,
}

fn case(name: &'static str, yaml: String, line: u64, needle: &'static str) -> Case {
    Case {
        name,
        yaml,
        line,
        needle,
    }
}

/// A second account appended after `etl_nightly`, starting at line [`END`].
fn second_account(name: &str, extra: &str) -> String {
    account_with(&format!(
        "  {name}:\n    database: orders\n    purpose: Reports\n    owner: bi\n{extra}"
    ))
}

/// Every case is an inventory that `check` refuses, the line of the error and a
/// fragment of its message.
fn bad_inventories() -> Vec<Case> {
    let long_name = format!("  {}:", "a".repeat(41));
    let long_schema = format!(
        "      - {{ schema: {}, privileges: [USAGE] }}",
        "s".repeat(64)
    );
    vec![
        // Hostile or malformed account names: the name is also the role's name.
        case(
            "uppercase name",
            edit(&[("  etl_nightly:", "  ETL_Nightly:")]),
            ACCOUNT,
            "must match ^[a-z][a-z0-9_]{0,39}$",
        ),
        case(
            "sql in name",
            edit(&[("  etl_nightly:", "  \"x; DROP ROLE postgres\":")]),
            ACCOUNT,
            "must match",
        ),
        case(
            "single quote in name",
            edit(&[("  etl_nightly:", "  \"etl'nightly\":")]),
            ACCOUNT,
            "must match",
        ),
        case(
            "double quote in name",
            edit(&[("  etl_nightly:", "  'etl\"nightly':")]),
            ACCOUNT,
            "must match",
        ),
        case(
            "41-character name",
            edit(&[("  etl_nightly:", &long_name)]),
            ACCOUNT,
            "must match",
        ),
        case(
            "leading digit",
            edit(&[("  etl_nightly:", "  1etl:")]),
            ACCOUNT,
            "must match",
        ),
        case(
            "empty name",
            edit(&[("  etl_nightly:", "  \"\":")]),
            ACCOUNT,
            "must match",
        ),
        case(
            "non-ASCII name",
            edit(&[("  etl_nightly:", "  café:")]),
            ACCOUNT,
            "must match",
        ),
        case(
            "hyphen in name",
            edit(&[("  etl_nightly:", "  etl-nightly:")]),
            ACCOUNT,
            "must match",
        ),
        case(
            "bad database name",
            edit(&[("  orders:", "  Orders:")]),
            6,
            "database name \"Orders\" must match",
        ),
        case(
            "bad store name",
            edit(&[("  local: {", "  \"local store\": {")]),
            11,
            "store name \"local store\" must match",
        ),
        // Unknown keys are serde errors, located.
        case(
            "unknown top-level key",
            edit(&[("state: sqlite", "stat: sqlite")]),
            3,
            "unknown field `stat`",
        ),
        case(
            "unknown account key",
            edit(&[("    strategy: ephemeral", "    stratgy: ephemeral")]),
            17,
            "unknown field `stratgy`",
        ),
        case(
            "unknown database key",
            edit(&[("    password_file:", "    passwd_file:")]),
            9,
            "unknown field `passwd_file`",
        ),
        case(
            "unknown grant key",
            edit(&[(
                "[USAGE] }\n      - { schema: analytics, tables",
                "[USAGE], colour: red }\n      - { schema: analytics, tables",
            )]),
            20,
            "unknown field `colour`",
        ),
        case(
            "unknown store key",
            edit(&[(
                "dir: /run/credrotd/secrets }",
                "dir: /run/credrotd/secrets, owner: root }",
            )]),
            11,
            "unknown field `owner`",
        ),
        case(
            "unknown defaults key",
            edit(&[("overlap: 1h, store", "overlaps: 1h, store")]),
            4,
            "unknown field `overlaps`",
        ),
        // Wrong types.
        case(
            "version is text",
            edit(&[("version: 1", "version: one")]),
            1,
            "invalid u32",
        ),
        case(
            "connection_limit is text",
            account_with("    connection_limit: five\n"),
            END,
            "invalid i32",
        ),
        case(
            "allow_ddl is text",
            account_with("    allow_ddl: sometimes\n"),
            END,
            "invalid boolean",
        ),
        case(
            "privileges is a scalar",
            edit(&[(
                "analytics, privileges: [USAGE] }",
                "analytics, privileges: USAGE }",
            )]),
            20,
            "expected sequence",
        ),
        // serde-saphyr locates a missing field at the last key of the mapping that
        // lacks it (here `accounts:` on line 11 and `grants:` on line 18).
        case(
            "version missing",
            edit(&[("version: 1\n", "")]),
            11,
            "missing field `version`",
        ),
        case(
            "account database missing",
            edit(&[("    database: orders\n", "")]),
            18,
            "missing field `database`",
        ),
        case(
            "store kind missing",
            edit(&[("kind: file, ", "")]),
            11,
            "missing field `kind`",
        ),
        // Bad YAML.
        case(
            "unclosed flow sequence",
            edit(&[(
                "analytics, privileges: [USAGE] }",
                "analytics, privileges: [USAGE }",
            )]),
            20,
            "mismatched bracket",
        ),
        // The scanner reads the tab as part of the previous line's plain scalar.
        case(
            "tab indentation",
            edit(&[("    owner: data-platform", "\towner: data-platform")]),
            15,
            "found a tab",
        ),
        case(
            "mapping value in plain scalar",
            edit(&[("    strategy: ephemeral", "    strategy: ephemeral: yes")]),
            17,
            "mapping values are not allowed",
        ),
        // Cron and time zone.
        case(
            "cron with 5 fields",
            edit(&[("\"0 0 */6 * * *\"", "\"0 */6 * * *\"")]),
            18,
            "invalid cron expression",
        ),
        case(
            "cron with 5 fields says why",
            edit(&[("\"0 0 */6 * * *\"", "\"0 */6 * * *\"")]),
            18,
            "expected 6 or 7 fields",
        ),
        case(
            "cron garbage",
            edit(&[("\"0 0 */6 * * *\"", "\"every six hours\"")]),
            18,
            "invalid cron expression",
        ),
        case(
            "cron out of range",
            edit(&[("\"0 0 */6 * * *\"", "\"0 0 25 * * *\"")]),
            18,
            "invalid cron expression",
        ),
        case(
            "cron that never fires",
            edit(&[("\"0 0 */6 * * *\"", "\"0 0 0 1 1 * 2001\"")]),
            18,
            "never fires",
        ),
        case(
            "bad default cron",
            edit(&[
                ("schedule: \"0 0 3 * * *\"", "schedule: \"daily\""),
                ("    schedule: \"0 0 */6 * * *\"\n", ""),
            ]),
            4,
            "invalid cron expression",
        ),
        case(
            "unknown time zone",
            edit(&[(
                "state: sqlite:///var/lib/credrotd/state.db",
                "timezone: Mars/Olympus",
            )]),
            3,
            "unknown time zone \"Mars/Olympus\"",
        ),
        // Durations.
        case(
            "overlap soon",
            account_with("    overlap: soon\n"),
            END,
            "overlap: invalid duration \"soon\"",
        ),
        case(
            "lifetime forever",
            account_with("    lifetime: forever\n"),
            END,
            "lifetime: invalid duration",
        ),
        case(
            "default overlap soon",
            edit(&[("overlap: 1h,", "overlap: soon,")]),
            4,
            "overlap: invalid duration",
        ),
        case(
            "expiry_margin garbage",
            account_with("    expiry_margin: a bit\n"),
            END,
            "expiry_margin: invalid duration",
        ),
        case(
            "revoke grace garbage",
            account_with("    revoke: { grace: later }\n"),
            END,
            "revoke.grace: invalid duration",
        ),
        // Dangling references.
        case(
            "unknown database",
            edit(&[("    database: orders", "    database: nope")]),
            14,
            "unknown database \"nope\"; defined databases: orders",
        ),
        case(
            "unknown store",
            account_with("    store: nowhere\n"),
            END,
            "unknown store \"nowhere\"; defined stores: local",
        ),
        case(
            "one unknown store of a list",
            account_with("    store: [local, nowhere]\n"),
            END,
            "unknown store \"nowhere\"",
        ),
        case(
            "unknown default store",
            edit(&[("store: local }", "store: vault }")]),
            4,
            "unknown store \"vault\"",
        ),
        case(
            "empty store list",
            account_with("    store: []\n"),
            END,
            "lists no store",
        ),
        case(
            "no store anywhere",
            edit(&[(", store: local }", " }")]),
            ACCOUNT,
            "no store",
        ),
        case(
            "no schedule anywhere",
            edit(&[
                ("schedule: \"0 0 3 * * *\", ", ""),
                ("    schedule: \"0 0 */6 * * *\"\n", ""),
            ]),
            ACCOUNT,
            "no schedule",
        ),
        // Duplicates: YAML keys, and login roles two accounts would share.
        case(
            "duplicate account",
            second_account("etl_nightly", ""),
            END,
            "duplicate mapping key: etl_nightly",
        ),
        case(
            "duplicate database key",
            edit(&[(
                "    engine: postgres\n",
                "    engine: postgres\n    engine: postgresql\n",
            )]),
            8,
            "duplicate mapping key: engine",
        ),
        case(
            "alternating role clash",
            {
                let yaml = edit(&[
                    ("    strategy: ephemeral", "    strategy: alternating"),
                    ("  etl_nightly:", "  etl:"),
                ]);
                format!(
                    "{yaml}  etl_a:\n    database: orders\n    purpose: Reports\n    owner: bi\n"
                )
            },
            END,
            "\"etl_a\"",
        ),
        case(
            "static role is another account",
            second_account(
                "reporter",
                "    strategy: static\n    role: etl_nightly\n    overlap: 0\n",
            ),
            END,
            "would use role \"etl_nightly\"",
        ),
        case(
            "static role is the account's own name",
            second_account(
                "etl",
                "    strategy: static\n    role: etl\n    overlap: 0\n",
            ),
            END + 5,
            "the static role must differ from the account name",
        ),
        // Production policy.
        case(
            "missing purpose",
            edit(&[("    purpose: Nightly ETL into the analytics schema\n", "")]),
            ACCOUNT,
            "`purpose` is required",
        ),
        case(
            "missing owner",
            edit(&[("    owner: data-platform\n", "")]),
            ACCOUNT,
            "`owner` is required",
        ),
        case(
            "empty purpose",
            edit(&[(
                "    purpose: Nightly ETL into the analytics schema",
                "    purpose: \"  \"",
            )]),
            15,
            "`purpose` must not be empty",
        ),
        case(
            "ALL on tables",
            edit(&[("[select, INSERT]", "[ALL]")]),
            21,
            "ALL PRIVILEGES",
        ),
        case(
            "ALL PRIVILEGES on schema",
            edit(&[(
                "analytics, privileges: [USAGE] }",
                "analytics, privileges: [ALL PRIVILEGES] }",
            )]),
            20,
            "ALL PRIVILEGES",
        ),
        case(
            "TRUNCATE without allow_ddl",
            edit(&[("[select, INSERT]", "[SELECT, TRUNCATE]")]),
            21,
            "DDL privileges (TRUNCATE) need `allow_ddl: true`",
        ),
        case(
            "CREATE without allow_ddl",
            edit(&[(
                "analytics, privileges: [USAGE] }",
                "analytics, privileges: [USAGE, CREATE] }",
            )]),
            20,
            "DDL privileges (CREATE)",
        ),
        case(
            "allow_ddl false is not enough",
            format!(
                "{}    allow_ddl: false\n",
                edit(&[("[select, INSERT]", "[REFERENCES, TRIGGER]")])
            ),
            21,
            "DDL privileges (REFERENCES, TRIGGER)",
        ),
        case(
            "inline password",
            edit(&[(
                "postgres://credrotd_admin@db1",
                "postgres://credrotd_admin:hunter2@db1",
            )]),
            8,
            "carries a password inline",
        ),
        case(
            "lifetime over 7 days",
            edit(&[("\"0 0 */6 * * *\"\n", "\"0 0 3 * * *\"\n    lifetime: 8d\n")]),
            19,
            "exceeds 7 days",
        ),
        case(
            "monthly schedule is over 7 days",
            edit(&[("\"0 0 */6 * * *\"", "\"0 0 3 1 * *\"")]),
            18,
            "exceeds 7 days",
        ),
        case(
            "static without overlap 0",
            format!(
                "{}    role: app_user\n",
                edit(&[("    strategy: ephemeral", "    strategy: static")])
            ),
            4,
            "write `overlap: 0`",
        ),
        case(
            "static with overlap 30m",
            format!(
                "{}    role: app_user\n    overlap: 30m\n",
                edit(&[("    strategy: ephemeral", "    strategy: static")])
            ),
            END + 1,
            "write `overlap: 0`",
        ),
        case(
            "dangerous membership",
            account_with("    member_of: [pg_read_all_data]\n"),
            END,
            "far more than least privilege",
        ),
        case(
            "world-readable file store",
            edit(&[(
                "dir: /run/credrotd/secrets }",
                "dir: /run/credrotd/secrets, mode: \"0644\" }",
            )]),
            11,
            "every local user",
        ),
        // Schedule arithmetic.
        case(
            "lifetime shorter than interval + overlap",
            account_with("    lifetime: 2h\n"),
            END,
            "lifetime 2h cannot cover the schedule interval plus the overlap (7h)",
        ),
        case(
            "overlap equal to interval",
            account_with("    overlap: 6h\n"),
            END,
            "overlap 6h is not shorter than the schedule's shortest interval 6h",
        ),
        case(
            "overlap longer than interval",
            account_with("    overlap: 1day\n"),
            END,
            "is not shorter than",
        ),
        case(
            "default overlap too long for schedule",
            edit(&[("overlap: 1h,", "overlap: 7h,")]),
            4,
            "is not shorter than",
        ),
        // Grants.
        case(
            "EXECUTE on tables",
            edit(&[("[select, INSERT]", "[SELECT, EXECUTE]")]),
            21,
            "privilege \"EXECUTE\" does not apply to tables",
        ),
        case(
            "SELECT on a schema",
            edit(&[(
                "analytics, privileges: [USAGE] }",
                "analytics, privileges: [SELECT] }",
            )]),
            20,
            "does not apply to a schema",
        ),
        case(
            "DELETE on sequences",
            edit(&[(
                "sequences: \"*\", privileges: [USAGE]",
                "sequences: \"*\", privileges: [DELETE]",
            )]),
            23,
            "does not apply to sequences",
        ),
        case(
            "unknown privilege",
            edit(&[("[select, INSERT]", "[SELECT, OWN]")]),
            21,
            "privilege \"OWN\"",
        ),
        case(
            "empty tables list",
            edit(&[("tables: [orders, customers]", "tables: []")]),
            22,
            "tables: the list is empty",
        ),
        case(
            "tables and sequences in one grant",
            edit(&[(
                "tables: \"*\", privileges",
                "tables: \"*\", sequences: \"*\", privileges",
            )]),
            21,
            "split it into several grants",
        ),
        case(
            "tables is a name, not a list",
            edit(&[("tables: [orders, customers]", "tables: orders")]),
            22,
            "expected \"*\" or a list of names",
        ),
        case(
            "empty privileges",
            edit(&[("[select, INSERT]", "[]")]),
            21,
            "lists no privileges",
        ),
        case(
            "double quote in schema",
            edit(&[("{ schema: public,", "{ schema: 'pub\"lic',")]),
            22,
            "contains a control character or a double quote",
        ),
        case(
            "control character in table",
            edit(&[("[orders, customers]", "[orders, \"cust\\x07omers\"]")]),
            22,
            "contains a control character or a double quote",
        ),
        case(
            "newline in table",
            edit(&[("[orders, customers]", "[orders, \"x\\n; DROP TABLE y\"]")]),
            22,
            "control character",
        ),
        case(
            "empty schema",
            edit(&[("{ schema: public,", "{ schema: \"\",")]),
            22,
            "must not be empty",
        ),
        case(
            "schema over 63 bytes",
            edit(&[(
                "      - { schema: analytics, privileges: [USAGE] }",
                &long_schema,
            )]),
            20,
            "longer than 63 bytes",
        ),
        // Settings, memberships, limits.
        case(
            "setting role",
            account_with("    settings: { role: postgres }\n"),
            END,
            "setting \"role\" cannot be set per account",
        ),
        case(
            "setting session_authorization",
            account_with("    settings: { session_authorization: postgres }\n"),
            END,
            "cannot be set per account",
        ),
        case(
            "list-valued setting",
            account_with("    settings: { search_path: \"analytics, public\" }\n"),
            END,
            "list-valued and superuser-only settings are refused",
        ),
        case(
            "setting name with a space",
            account_with("    settings: { \"app.tenant id\": \"42\" }\n"),
            END,
            "not a valid parameter name",
        ),
        case(
            "setting name with sql",
            account_with("    settings: { \"x = 1; DROP ROLE y; SET z\": \"1\" }\n"),
            END,
            "not a valid parameter name",
        ),
        case(
            "uppercase setting name",
            account_with("    settings: { App.Tenant: \"42\" }\n"),
            END,
            "not a valid parameter name",
        ),
        case(
            "NUL in setting value",
            account_with("    settings: { app.tenant_id: \"4\\02\" }\n"),
            END,
            "NUL byte",
        ),
        case(
            "connection_limit 0",
            account_with("    connection_limit: 0\n"),
            END,
            "connection_limit must be positive",
        ),
        case(
            "connection_limit -5",
            account_with("    connection_limit: -5\n"),
            END,
            "connection_limit must be positive",
        ),
        case(
            "member of public",
            account_with("    member_of: [PUBLIC]\n"),
            END,
            "cannot be a member of",
        ),
        case(
            "member of itself",
            account_with("    member_of: [etl_nightly]\n"),
            END,
            "cannot be a member of",
        ),
        case(
            "member_of with double quote",
            account_with("    member_of: ['a\"b']\n"),
            END,
            "double quote",
        ),
        // Strategies.
        case(
            "static without role",
            edit(&[("    strategy: ephemeral", "    strategy: static")]),
            17,
            "strategy static needs `role",
        ),
        case(
            "role on ephemeral",
            account_with("    role: app_user\n"),
            END,
            "`role` only applies to strategy static",
        ),
        case(
            "adopt on alternating",
            format!(
                "{}    adopt: true\n",
                edit(&[("    strategy: ephemeral", "    strategy: alternating")])
            ),
            END,
            "`adopt` only applies",
        ),
        case(
            "unknown strategy",
            edit(&[("    strategy: ephemeral", "    strategy: rolling")]),
            17,
            "unknown strategy \"rolling\"",
        ),
        case(
            "static role with control char",
            format!(
                "{}    role: \"app\\tuser\"\n    overlap: 0\n",
                edit(&[("    strategy: ephemeral", "    strategy: static")])
            ),
            END,
            "control character",
        ),
        // What this build does not support yet, and other top-level checks.
        case(
            "engine mysql with a postgres url",
            edit(&[("engine: postgres", "engine: mysql")]),
            8,
            "expected mysql://",
        ),
        case(
            "engine postgres with a mysql url",
            edit(&[(
                "url: postgres://credrotd_admin@db1:5432/orders?sslmode=verify-full",
                "url: mysql://credrotd_admin@db1:3306/orders",
            )]),
            8,
            "expected postgres://",
        ),
        case(
            "hosts on postgres",
            edit(&[(
                "    password_file: secrets/orders\n",
                "    password_file: secrets/orders\n    hosts: [\"%\"]\n",
            )]),
            10,
            "applies to engine mysql or mariadb only",
        ),
        case(
            "engine oracle",
            edit(&[("engine: postgres", "engine: oracle")]),
            7,
            "unknown engine \"oracle\"",
        ),
        case(
            "vault without address",
            edit(&[("{ kind: file, dir: /run/credrotd/secrets }", "{ kind: vault, auth: { method: token, token_file: secrets/vault } }")]),
            11,
            "needs `address`",
        ),
        case(
            "vault without auth",
            edit(&[("{ kind: file, dir: /run/credrotd/secrets }", "{ kind: vault, address: \"https://vault:8200\" }")]),
            11,
            "needs `auth`",
        ),
        case(
            "vault address not a url",
            edit(&[("{ kind: file, dir: /run/credrotd/secrets }", "{ kind: vault, address: vault:8200, auth: { method: token, token_file: t } }")]),
            11,
            "must be an http:// or https:// URL",
        ),
        case(
            "vault plain http in production",
            edit(&[("{ kind: file, dir: /run/credrotd/secrets }", "{ kind: vault, address: \"http://vault:8200\", auth: { method: token, token_file: t } }")]),
            11,
            "plain text; use https",
        ),
        case(
            "vault unknown auth method",
            edit(&[("{ kind: file, dir: /run/credrotd/secrets }", "{ kind: vault, address: \"https://vault:8200\", auth: { method: ldap } }")]),
            11,
            "unknown auth method \"ldap\"",
        ),
        case(
            "vault token without source",
            edit(&[("{ kind: file, dir: /run/credrotd/secrets }", "{ kind: vault, address: \"https://vault:8200\", auth: { method: token } }")]),
            11,
            "auth needs token_file or token_env",
        ),
        case(
            "vault inline token in production",
            edit(&[("{ kind: file, dir: /run/credrotd/secrets }", "{ kind: vault, address: \"https://vault:8200\", auth: { method: token, token: s.abc } }")]),
            11,
            "written inline",
        ),
        case(
            "vault two token sources",
            edit(&[("{ kind: file, dir: /run/credrotd/secrets }", "{ kind: vault, address: \"https://vault:8200\", auth: { method: token, token_file: t, token_env: VAULT_TOKEN } }")]),
            11,
            "set only one of token_file",
        ),
        case(
            "vault approle without secret id",
            edit(&[("{ kind: file, dir: /run/credrotd/secrets }", "{ kind: vault, address: \"https://vault:8200\", auth: { method: approle, role_id_file: r } }")]),
            11,
            "needs secret_id_file",
        ),
        case(
            "vault approle without role id",
            edit(&[("{ kind: file, dir: /run/credrotd/secrets }", "{ kind: vault, address: \"https://vault:8200\", auth: { method: approle, secret_id_file: s } }")]),
            11,
            "needs role_id_file",
        ),
        case(
            "vault approle with token file",
            edit(&[("{ kind: file, dir: /run/credrotd/secrets }", "{ kind: vault, address: \"https://vault:8200\", auth: { method: approle, role_id: r, secret_id_file: s, token_file: t } }")]),
            11,
            "`token_file` does not apply to auth method approle",
        ),
        case(
            "vault kubernetes without role",
            edit(&[("{ kind: file, dir: /run/credrotd/secrets }", "{ kind: vault, address: \"https://vault:8200\", auth: { method: kubernetes } }")]),
            11,
            "needs `role`",
        ),
        case(
            "vault unknown auth key",
            edit(&[("{ kind: file, dir: /run/credrotd/secrets }", "{ kind: vault, address: \"https://vault:8200\", auth: { method: token, token_file: t, password: x } }")]),
            11,
            "password",
        ),
        case(
            "vault bad mount",
            edit(&[("{ kind: file, dir: /run/credrotd/secrets }", "{ kind: vault, address: \"https://vault:8200\", mount: \"a b\", auth: { method: token, token_file: t } }")]),
            11,
            "must be a Vault mount path",
        ),
        case(
            "vault with region",
            edit(&[("{ kind: file, dir: /run/credrotd/secrets }", "{ kind: vault, address: \"https://vault:8200\", region: eu-west-1, auth: { method: token, token_file: t } }")]),
            11,
            "`region` does not apply to kind vault",
        ),
        case(
            "aws without region",
            edit(&[("{ kind: file, dir: /run/credrotd/secrets }", "{ kind: aws_secrets_manager }")]),
            11,
            "needs `region`",
        ),
        case(
            "aws bad region",
            edit(&[("{ kind: file, dir: /run/credrotd/secrets }", "{ kind: aws_secrets_manager, region: Europe }")]),
            11,
            "not an AWS region",
        ),
        case(
            "aws with auth",
            edit(&[("{ kind: file, dir: /run/credrotd/secrets }", "{ kind: aws_secrets_manager, region: eu-west-1, auth: { method: token, token_file: t } }")]),
            11,
            "`auth` does not apply",
        ),
        case(
            "aws with address",
            edit(&[("{ kind: file, dir: /run/credrotd/secrets }", "{ kind: aws_secrets_manager, region: eu-west-1, address: \"https://x\" }")]),
            11,
            "`address` does not apply to kind aws_secrets_manager",
        ),
        case(
            "aws endpoint not a url",
            edit(&[("{ kind: file, dir: /run/credrotd/secrets }", "{ kind: aws_secrets_manager, region: eu-west-1, endpoint: localhost }")]),
            11,
            "endpoint must be an http",
        ),
        case(
            "aws plain http endpoint in production",
            edit(&[("{ kind: file, dir: /run/credrotd/secrets }", "{ kind: aws_secrets_manager, region: eu-west-1, endpoint: \"http://sm.internal\" }")]),
            11,
            "plain http",
        ),
        case(
            "aws secret name with a space",
            format!(
                "{}    path: \"db/etl nightly\"\n",
                edit(&[("{ kind: file, dir: /run/credrotd/secrets }", "{ kind: aws_secrets_manager, region: eu-west-1 }")])
            ),
            END,
            "not an AWS secret name",
        ),
        case(
            "vault path with a space",
            format!(
                "{}    path: \"db/etl nightly\"\n",
                edit(&[("{ kind: file, dir: /run/credrotd/secrets }", "{ kind: vault, address: \"https://vault:8200\", auth: { method: token, token_file: t } }")])
            ),
            END,
            "not a Vault path",
        ),
        case(
            "store kind unknown",
            edit(&[("kind: file", "kind: s3")]),
            11,
            "unknown store kind \"s3\"",
        ),
        case(
            "file store without dir",
            edit(&[(
                "{ kind: file, dir: /run/credrotd/secrets }",
                "{ kind: file }",
            )]),
            11,
            "needs `dir`",
        ),
        case(
            "address on a file store",
            edit(&[(
                "dir: /run/credrotd/secrets }",
                "dir: /run/credrotd/secrets, address: \"https://vault\" }",
            )]),
            11,
            "does not apply to kind file",
        ),
        case(
            "mount on a file store",
            edit(&[(
                "dir: /run/credrotd/secrets }",
                "dir: /run/credrotd/secrets, mount: secret }",
            )]),
            11,
            "`mount` does not apply to kind file",
        ),
        case(
            "bad file mode",
            edit(&[(
                "dir: /run/credrotd/secrets }",
                "dir: /run/credrotd/secrets, mode: \"rw-r-----\" }",
            )]),
            11,
            "expected an octal file mode",
        ),
        case(
            "postgres ledger",
            edit(&[(
                "state: sqlite:///var/lib/credrotd/state.db",
                "state: postgres://ledger@db/credrotd",
            )]),
            3,
            "not supported yet",
        ),
        case(
            "unknown ledger scheme",
            edit(&[(
                "state: sqlite:///var/lib/credrotd/state.db",
                "state: /var/lib/state.db",
            )]),
            3,
            "expected a sqlite:// URL",
        ),
        case(
            "version 2",
            edit(&[("version: 1", "version: 2")]),
            1,
            "unsupported inventory version 2; expected 1",
        ),
        case(
            "unknown environment",
            edit(&[("environment: production", "environment: prod")]),
            2,
            "unknown environment \"prod\"",
        ),
        case(
            "url not postgres",
            edit(&[(
                "url: postgres://credrotd_admin@db1:5432/orders?sslmode=verify-full",
                "url: db1:5432/orders",
            )]),
            8,
            "expected postgres://",
        ),
        case(
            "password_file and password_env",
            edit(&[(
                "    password_file: secrets/orders\n",
                "    password_file: secrets/orders\n    password_env: PGPASSWORD\n",
            )]),
            9,
            "not both",
        ),
        case(
            "max_connections 0",
            edit(&[(
                "    password_file: secrets/orders\n",
                "    password_file: secrets/orders\n    max_connections: 0\n",
            )]),
            10,
            "max_connections must be at least 1",
        ),
        case(
            "path with ..",
            account_with("    path: database/../../etc\n"),
            END,
            "must not contain \"..\"",
        ),
        case(
            "metrics listen",
            edit(&[(
                "state: sqlite:///var/lib/credrotd/state.db",
                "metrics: { listen: \"localhost\" }",
            )]),
            3,
            "metrics.listen",
        ),
        case(
            "rotation concurrency 0",
            edit(&[(
                "state: sqlite:///var/lib/credrotd/state.db",
                "rotation: { concurrency: 0 }",
            )]),
            3,
            "rotation.concurrency",
        ),
    ]
}

#[test]
fn bad_inventories_are_refused_with_a_located_message() {
    let cases = bad_inventories();
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for c in &cases {
        if let Some(why) = err_mismatch(&c.yaml, c.line, c.needle) {
            failures.push(format!(
                "case {:?}: {why}\n--- inventory ---\n{}",
                c.name, c.yaml
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

#[test]
fn case_names_are_unique() {
    let cases = bad_inventories();
    let names: BTreeSet<&str> = cases.iter().map(|c| c.name).collect();
    assert_eq!(names.len(), cases.len());
}

// ---------------------------------------------------------------------------
// All errors, not only the first.

#[test]
fn check_reports_every_semantic_error() {
    let yaml = format!(
        "{}    connection_limit: 0\n",
        edit(&[
            ("version: 1", "version: 2"),
            (
                "state: sqlite:///var/lib/credrotd/state.db",
                "state: postgres://ledger@db/credrotd"
            ),
        ])
    );
    let errors = errors_of(&yaml).unwrap_or_else(|why| panic!("{why}"));
    let mut lines: Vec<u64> = errors.iter().map(|d| d.line).collect();
    lines.sort_unstable();
    assert_eq!(lines, [1, 3, END], "got:\n{}", show(&errors));
    check_err(&yaml, 1, "unsupported inventory version 2");
    check_err(&yaml, 3, "not supported yet");
    check_err(&yaml, END, "connection_limit must be positive");
}

#[test]
fn check_reports_errors_of_every_account_and_every_field() {
    // Two errors in one account (both policy rules, on its name's line) and one in
    // another account.
    let yaml = format!(
        "{}  reporter:\n    database: orders\n    purpose: Reports\n    owner: bi\n    overlap: soon\n",
        edit(&[
            ("    purpose: Nightly ETL into the analytics schema\n", ""),
            ("    owner: data-platform\n", ""),
        ])
    );
    let errors = errors_of(&yaml).unwrap_or_else(|why| panic!("{why}"));
    assert_eq!(errors.len(), 3, "got:\n{}", show(&errors));
    check_err(&yaml, ACCOUNT, "`purpose` is required");
    check_err(&yaml, ACCOUNT, "`owner` is required");
    check_err(&yaml, 26, "overlap: invalid duration \"soon\"");
}

// ---------------------------------------------------------------------------
// Staging and development: policy rules become warnings.

/// An inventory that breaks every policy rule once, with the line of each breach.
fn policy_breaches() -> (String, Vec<(u64, &'static str)>) {
    let yaml = format!(
        "{}  legacy:\n    database: orders\n    purpose: Old batch job\n    owner: ops\n    strategy: static\n    role: legacy_app\n    schedule: \"0 0 3 * * *\"\n    lifetime: 8d\n    member_of: [pg_write_all_data]\n",
        edit(&[
            ("postgres://credrotd_admin@db1", "postgres://credrotd_admin:hunter2@db1"),
            ("dir: /run/credrotd/secrets }", "dir: /run/credrotd/secrets, mode: \"0644\" }"),
            ("    purpose: Nightly ETL into the analytics schema\n", ""),
            ("    owner: data-platform\n", ""),
            ("[select, INSERT]", "[ALL]"),
            ("analytics, privileges: [USAGE] }", "analytics, privileges: [USAGE, CREATE] }"),
            ("?sslmode=verify-full", "?sslmode=require"),
        ])
    );
    let expected = vec![
        (8, "carries a password inline"),
        (
            8,
            "is not verified TLS: sslmode=require encrypts but accepts any certificate",
        ),
        (11, "every local user"),
        (ACCOUNT, "`purpose` is required"),
        (ACCOUNT, "`owner` is required"),
        (18, "DDL privileges (CREATE)"),
        (19, "ALL PRIVILEGES"),
        (19, "DDL privileges (REFERENCES, TRIGGER, TRUNCATE)"),
        // The static account's overlap comes from `defaults`.
        (4, "write `overlap: 0`"),
        (29, "exceeds 7 days"),
        (30, "far more than least privilege"),
    ];
    (yaml, expected)
}

#[test]
fn production_refuses_every_policy_breach() {
    let (yaml, expected) = policy_breaches();
    let errors = errors_of(&yaml).unwrap_or_else(|why| panic!("{why}"));
    assert_eq!(errors.len(), expected.len(), "got:\n{}", show(&errors));
    for (line, needle) in expected {
        check_err(&yaml, line, needle);
    }
}

#[test]
fn staging_and_development_warn_what_production_would_refuse() {
    let (yaml, expected) = policy_breaches();
    for env in ["staging", "development"] {
        let yaml = in_env(env, &yaml);
        let checked = check_warn(&yaml, ACCOUNT, "production would refuse");
        assert_eq!(
            checked.warnings.len(),
            expected.len(),
            "{env}: got:\n{}",
            show(&checked.warnings)
        );
        for (line, needle) in &expected {
            let w = check_warn(&yaml, *line, needle);
            assert!(w
                .warnings
                .iter()
                .all(|d| d.message.starts_with("production would refuse")));
        }
        let inv = checked.inventory;
        assert_eq!(inv.environment.as_str(), env);
        assert_eq!(inv.accounts.len(), 2);
        assert_eq!(
            inv.accounts["legacy"].strategy,
            Strategy::Static {
                role: "legacy_app".into(),
                adopt: false
            }
        );
        // Static has no overlap on PostgreSQL, whatever `defaults` say.
        assert_eq!(inv.accounts["legacy"].overlap, Duration::ZERO);
        assert_eq!(
            inv.accounts["legacy"].lifetime,
            Some(Duration::from_secs(8 * 86400))
        );
        assert_eq!(inv.accounts["legacy"].member_of, ["pg_write_all_data"]);
    }
}

#[test]
fn relaxed_environments_still_refuse_what_is_not_policy() {
    for env in ["staging", "development"] {
        let bad_cron = edit(&[("\"0 0 */6 * * *\"", "\"0 */6 * * *\"")]);
        check_err(&in_env(env, &bad_cron), 18, "invalid cron expression");
        let hostile = edit(&[("  etl_nightly:", "  \"x; DROP ROLE postgres\":")]);
        check_err(&in_env(env, &hostile), ACCOUNT, "must match");
        let forbidden = account_with("    settings: { role: postgres }\n");
        check_err(&in_env(env, &forbidden), END, "cannot be set per account");
        check_err(
            &in_env(env, &account_with("    overlap: 6h\n")),
            END,
            "is not shorter than",
        );
    }
}

#[test]
fn environment_defaults_to_production() {
    let yaml = edit(&[
        ("environment: production\n", ""),
        ("    owner: data-platform\n", ""),
    ]);
    check_err(&yaml, ACCOUNT - 1, "`owner` is required");
}

// ---------------------------------------------------------------------------
// The valid base and what parsing makes of it.

fn privs(p: &[&'static str]) -> BTreeSet<&'static str> {
    p.iter().copied().collect()
}

#[test]
fn base_inventory_is_valid() {
    let inv = check_ok(BASE).inventory;
    assert_eq!(inv.source, Path::new("inv.yaml"));
    assert_eq!(inv.environment, Environment::Production);
    assert_eq!(inv.state, "sqlite:///var/lib/credrotd/state.db");
    assert_eq!(inv.timezone, chrono_tz::UTC);
    assert!(inv.admin.is_none() && inv.metrics.is_none());

    let db = &inv.databases["orders"];
    assert_eq!(db.engine, EngineKind::Postgres);
    assert_eq!(
        db.url,
        "postgres://credrotd_admin@db1:5432/orders?sslmode=verify-full"
    );
    assert_eq!(db.max_connections, 4);

    let StoreKind::File { dir, mode } = &inv.stores["local"].kind else {
        panic!("local is a file store")
    };
    assert_eq!(dir, Path::new("/run/credrotd/secrets"));
    assert_eq!(*mode, 0o440);

    assert_eq!(inv.accounts.len(), 1);
    let acc = &inv.accounts["etl_nightly"];
    assert_eq!(acc.name, "etl_nightly");
    assert_eq!(acc.scoped_role(), "etl_nightly");
    assert_eq!(acc.database, "orders");
    assert_eq!(
        acc.purpose.as_deref(),
        Some("Nightly ETL into the analytics schema")
    );
    assert_eq!(acc.owner.as_deref(), Some("data-platform"));
    assert_eq!(acc.strategy, Strategy::Ephemeral);
    assert_eq!(acc.schedule.expr(), "0 0 */6 * * *");
    assert_eq!(acc.schedule.tz(), chrono_tz::UTC);
    assert_eq!(acc.lifetime, None);
    assert_eq!(acc.expiry_margin, Duration::from_secs(3600));
    assert!(!acc.allow_ddl);
    assert!(acc.member_of.is_empty() && acc.settings.is_empty());
    assert_eq!(acc.connection_limit, None);
    assert!(acc.revoke.terminate_sessions);
    assert_eq!(acc.revoke.grace, Duration::ZERO);
    assert_eq!(
        acc.grants,
        [
            Grant {
                schema: "analytics".into(),
                kind: ObjectKind::Schema,
                objects: None,
                privileges: privs(&["USAGE"]),
                row_filter: None,
            },
            Grant {
                schema: "analytics".into(),
                kind: ObjectKind::Table,
                objects: Some(Objects::All),
                // `select` is normalized to upper case.
                privileges: privs(&["SELECT", "INSERT"]),
                row_filter: None,
            },
            Grant {
                schema: "public".into(),
                kind: ObjectKind::Table,
                objects: Some(Objects::Named(vec!["orders".into(), "customers".into()])),
                privileges: privs(&["SELECT"]),
                row_filter: None,
            },
            Grant {
                schema: "analytics".into(),
                kind: ObjectKind::Sequence,
                objects: Some(Objects::All),
                privileges: privs(&["USAGE"]),
                row_filter: None,
            },
        ]
    );
}

#[test]
fn defaults_apply_when_the_account_is_silent() {
    let yaml = edit(&[
        ("    strategy: ephemeral\n", ""),
        ("    schedule: \"0 0 */6 * * *\"\n", ""),
        (
            "overlap: 1h, store: local }",
            "overlap: 45m, store: local, strategy: alternating, expiry_margin: 10m }",
        ),
    ]);
    let acc = &check_ok(&yaml).inventory.accounts["etl_nightly"];
    assert_eq!(acc.schedule.expr(), "0 0 3 * * *");
    assert_eq!(acc.overlap, Duration::from_secs(45 * 60));
    assert_eq!(acc.expiry_margin, Duration::from_secs(10 * 60));
    assert_eq!(acc.strategy, Strategy::Alternating);
    assert_eq!(acc.stores, ["local"]);
    assert_eq!(acc.path, "database/orders/etl_nightly");
}

#[test]
fn account_settings_override_defaults() {
    let yaml = account_with(
        "    overlap: 30m\n    store: [local, local]\n    path: /apps/etl/\n    lifetime: 12h\n    connection_limit: 5\n    settings: { app.tenant_id: \"42\" }\n    member_of: [tenant_reader]\n    revoke: { terminate_sessions: false, grace: 5m }\n",
    );
    let acc = &check_ok(&yaml).inventory.accounts["etl_nightly"];
    assert_eq!(acc.schedule.expr(), "0 0 */6 * * *");
    assert_eq!(acc.overlap, Duration::from_secs(30 * 60));
    assert_eq!(acc.stores, ["local"], "a store listed twice is used once");
    assert_eq!(acc.path, "apps/etl");
    assert_eq!(acc.lifetime, Some(Duration::from_secs(12 * 3600)));
    assert_eq!(acc.connection_limit, Some(5));
    assert_eq!(acc.settings["app.tenant_id"], "42");
    assert_eq!(acc.member_of, ["tenant_reader"]);
    assert!(!acc.revoke.terminate_sessions);
    assert_eq!(acc.revoke.grace, Duration::from_secs(300));
}

#[test]
fn without_overlap_anywhere_the_overlap_is_one_hour() {
    let yaml = edit(&[("overlap: 1h, ", "")]);
    let acc = &check_ok(&yaml).inventory.accounts["etl_nightly"];
    assert_eq!(acc.overlap, Duration::from_secs(3600));
}

#[test]
fn all_in_development_expands_to_every_privilege_of_the_kind() {
    let yaml = in_env(
        "development",
        &edit(&[
            (
                "analytics, privileges: [USAGE] }",
                "analytics, privileges: [all] }",
            ),
            ("[select, INSERT]", "[ALL PRIVILEGES]"),
            (
                "sequences: \"*\", privileges: [USAGE]",
                "sequences: \"*\", privileges: [All]",
            ),
        ]),
    );
    let checked = check_warn(&yaml, 21, "ALL PRIVILEGES is not least privilege");
    let grants = &checked.inventory.accounts["etl_nightly"].grants;
    for (grant, kind) in grants.iter().zip([
        ObjectKind::Schema,
        ObjectKind::Table,
        ObjectKind::Table,
        ObjectKind::Sequence,
    ]) {
        assert_eq!(grant.kind, kind);
    }
    assert_eq!(grants[0].privileges, privs(&["USAGE", "CREATE"]));
    assert_eq!(
        grants[1].privileges,
        privs(&[
            "SELECT",
            "INSERT",
            "UPDATE",
            "DELETE",
            "TRUNCATE",
            "REFERENCES",
            "TRIGGER"
        ])
    );
    assert_eq!(grants[1].objects, Some(Objects::All));
    assert_eq!(grants[3].privileges, privs(&["USAGE", "SELECT", "UPDATE"]));
    // ALL includes DDL privileges, which production would also refuse.
    check_warn(&yaml, 20, "DDL privileges (CREATE)");
    check_warn(&yaml, 21, "DDL privileges");
}

#[test]
fn allow_ddl_permits_ddl_privileges_in_production() {
    let yaml = format!(
        "{}    allow_ddl: true\n",
        edit(&[
            (
                "analytics, privileges: [USAGE] }",
                "analytics, privileges: [USAGE, CREATE] }"
            ),
            (
                "[select, INSERT]",
                "[SELECT, TRUNCATE, REFERENCES, TRIGGER]"
            ),
        ])
    );
    let acc = &check_ok(&yaml).inventory.accounts["etl_nightly"];
    assert!(acc.allow_ddl);
    assert_eq!(acc.grants[0].privileges, privs(&["USAGE", "CREATE"]));
    assert_eq!(
        acc.grants[1].privileges,
        privs(&["SELECT", "TRUNCATE", "REFERENCES", "TRIGGER"])
    );
}

#[test]
fn functions_take_execute() {
    let yaml = account_with(
        "      - { schema: api, functions: [refresh_totals], privileges: [execute] }\n",
    );
    let acc = &check_ok(&yaml).inventory.accounts["etl_nightly"];
    assert_eq!(
        acc.grants[4],
        Grant {
            schema: "api".into(),
            kind: ObjectKind::Function,
            objects: Some(Objects::Named(vec!["refresh_totals".into()])),
            privileges: privs(&["EXECUTE"]),
            row_filter: None,
        }
    );
}

#[test]
fn static_strategy_with_written_zero_overlap_is_valid() {
    for zero in ["0", "0s", "\"0\""] {
        let yaml = format!(
            "{}    role: legacy_app\n    adopt: true\n    overlap: {zero}\n",
            edit(&[("    strategy: ephemeral", "    strategy: static")])
        );
        let acc = &check_ok(&yaml).inventory.accounts["etl_nightly"];
        assert_eq!(
            acc.strategy,
            Strategy::Static {
                role: "legacy_app".into(),
                adopt: true
            }
        );
        assert_eq!(acc.overlap, Duration::ZERO);
    }
}

#[test]
fn names_at_the_limits_are_accepted() {
    let forty = "a".repeat(40);
    let yaml = edit(&[("  etl_nightly:", &format!("  {forty}:"))]);
    let inv = check_ok(&yaml).inventory;
    assert!(inv.accounts.contains_key(&forty));
    // One letter, digits and underscores.
    check_ok(&edit(&[("  etl_nightly:", "  e:")]));
    check_ok(&edit(&[("  etl_nightly:", "  etl_2024_v2:")]));
    // Object names are quoted, not restricted: spaces, capitals, 63 bytes are fine.
    let table = "T".repeat(63);
    let yaml = edit(&[(
        "[orders, customers]",
        &format!("[\"Order Lines\", {table}]"),
    )]);
    let acc = &check_ok(&yaml).inventory.accounts["etl_nightly"];
    assert_eq!(
        acc.grants[2].objects,
        Some(Objects::Named(vec!["Order Lines".into(), table]))
    );
}

#[test]
fn timezone_applies_to_schedules() {
    let yaml = edit(&[(
        "state: sqlite:///var/lib/credrotd/state.db",
        "timezone: Europe/Paris",
    )]);
    let inv = check_ok(&yaml).inventory;
    assert_eq!(inv.timezone, chrono_tz::Europe::Paris);
    assert_eq!(
        inv.accounts["etl_nightly"].schedule.tz(),
        chrono_tz::Europe::Paris
    );
}

#[test]
fn top_level_sections_are_parsed() {
    let yaml = edit(&[(
        "state: sqlite:///var/lib/credrotd/state.db\n",
        "state: sqlite:///var/lib/credrotd/state.db\nadmin: { socket: run/admin.sock, allow_uids: [0, 1000] }\nmetrics: { listen: \"127.0.0.1:9477\" }\nrotation: { concurrency: 2, retry_initial: 30s, retry_max: 5m }\n",
    )]);
    let inv = parse(Path::new("/etc/credrotd/inventory.yaml"), &yaml)
        .unwrap_or_else(|e| panic!("{e}"))
        .inventory;
    let admin = inv.admin.expect("admin section");
    assert_eq!(admin.socket, Path::new("/etc/credrotd/run/admin.sock"));
    assert_eq!(admin.allow_uids, [0, 1000]);
    assert_eq!(inv.metrics.expect("metrics").listen.port(), 9477);
    assert_eq!(inv.rotation.concurrency, 2);
    assert_eq!(inv.rotation.retry_initial, Duration::from_secs(30));
    assert_eq!(inv.rotation.retry_max, Duration::from_secs(300));
}

#[test]
fn unquoted_octal_mode_is_read_as_octal() {
    let yaml = edit(&[(
        "dir: /run/credrotd/secrets }",
        "dir: /run/credrotd/secrets, mode: 0640 }",
    )]);
    let StoreKind::File { mode, .. } = check_ok(&yaml).inventory.stores["local"].kind else {
        panic!("local is a file store")
    };
    assert_eq!(mode, 0o640);
}

#[test]
fn relative_paths_resolve_against_the_inventory_directory() {
    let yaml = edit(&[("dir: /run/credrotd/secrets }", "dir: secrets/out }")]);
    let inv = parse(Path::new("/etc/credrotd/inventory.yaml"), &yaml)
        .unwrap_or_else(|e| panic!("{e}"))
        .inventory;
    let PasswordSource::File(file) = &inv.databases["orders"].password else {
        panic!(
            "expected a password file: {:?}",
            inv.databases["orders"].password
        );
    };
    assert_eq!(file, Path::new("/etc/credrotd/secrets/orders"));
    let StoreKind::File { dir, .. } = &inv.stores["local"].kind else {
        panic!("local is a file store")
    };
    assert_eq!(dir, Path::new("/etc/credrotd/secrets/out"));
}

#[test]
fn password_env_is_kept_by_name() {
    let yaml = edit(&[(
        "    password_file: secrets/orders",
        "    password_env: ORDERS_ADMIN_PASSWORD",
    )]);
    let inv = check_ok(&yaml).inventory;
    assert!(matches!(
        &inv.databases["orders"].password,
        PasswordSource::Env(var) if var == "ORDERS_ADMIN_PASSWORD"
    ));
}

#[test]
fn load_reads_the_file_and_anchors_relative_paths() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("inventory.yaml");
    std::fs::write(&path, BASE).expect("write inventory");
    std::fs::create_dir(dir.path().join("secrets")).expect("mkdir");
    std::fs::write(dir.path().join("secrets/orders"), "pa55word\n").expect("write password");
    let inv = load(&path).unwrap_or_else(|e| panic!("{e}")).inventory;
    assert_eq!(inv.source, path);
    let source = &inv.databases["orders"].password;
    assert!(matches!(source, PasswordSource::File(f) if *f == dir.path().join("secrets/orders")));
    let password = source.read().expect("read").expect("a password");
    assert_eq!(password.expose(), "pa55word");

    let missing = dir.path().join("missing.yaml");
    assert!(matches!(load(&missing), Err(InventoryError::Read { path, .. }) if path == missing));
}

#[test]
fn diagnostics_render_as_file_line_column() {
    let errors =
        errors_of(&edit(&[("  etl_nightly:", "  ETL:")])).unwrap_or_else(|why| panic!("{why}"));
    assert_eq!(errors.len(), 1, "got:\n{}", show(&errors));
    assert_eq!((errors[0].line, errors[0].column), (ACCOUNT, 3));
    assert!(
        errors[0]
            .to_string()
            .starts_with("inv.yaml:13:3: error: account name \"ETL\" must match"),
        "{}",
        errors[0]
    );
    let err = InventoryError::Invalid { errors };
    assert!(err
        .to_string()
        .starts_with("inventory is invalid (1 error):\ninv.yaml:13:3: "));

    let errors = errors_of(&edit(&[(
        "    strategy: ephemeral",
        "    stratgy: ephemeral",
    )]))
    .unwrap_or_else(|why| panic!("{why}"));
    assert_eq!(
        (errors[0].line, errors[0].column),
        (17, 5),
        "got:\n{}",
        show(&errors)
    );
}

#[test]
fn an_inventory_without_accounts_warns() {
    let yaml = BASE[..BASE.find("accounts:").expect("accounts")].to_owned();
    check_warn(&yaml, 1, "lists no accounts");
    check_warn(&format!("{yaml}accounts: {{}}\n"), 1, "lists no accounts");
}

// ---------------------------------------------------------------------------
// Secrets never reach a message.

const SECRET: &str = "S3cretValue";

#[track_caller]
fn assert_no_secret(yaml: &str) {
    let text = match run(yaml) {
        Ok(checked) => show(&checked.warnings),
        Err(e) => e.to_string(),
    };
    assert!(
        !text.contains(SECRET),
        "a message shows the secret:\n{text}"
    );
}

#[test]
fn inline_password_is_refused_without_showing_it() {
    let yaml = edit(&[(
        "url: postgres://credrotd_admin@db1:5432/orders?sslmode=verify-full",
        "url: postgres://u:S3cretValue@h/db",
    )]);
    check_err(&yaml, 8, "carries a password inline");
    assert_no_secret(&yaml);
    let yaml = in_env("staging", &yaml);
    check_warn(
        &yaml,
        8,
        "production would refuse this: database \"orders\": the url carries a password inline",
    );
    assert_no_secret(&yaml);
}

#[test]
fn a_password_under_an_unknown_key_is_not_shown() {
    let yaml = edit(&[(
        "    password_file: secrets/orders",
        "    password: S3cretValue",
    )]);
    check_err(&yaml, 9, "unknown field `password`");
    assert_no_secret(&yaml);
}

#[test]
fn a_url_of_the_wrong_scheme_is_refused_without_showing_its_password() {
    let yaml = edit(&[(
        "url: postgres://credrotd_admin@db1:5432/orders?sslmode=verify-full",
        "url: mysql://u:S3cretValue@h/db",
    )]);
    check_err(&yaml, 8, "url: expected postgres://");
    assert_no_secret(&yaml);
}

#[test]
fn a_password_in_the_url_query_is_refused_without_showing_it() {
    let yaml = edit(&[(
        "url: postgres://credrotd_admin@db1:5432/orders?sslmode=verify-full",
        "url: postgres://credrotd_admin@db1:5432/orders?sslmode=require&password=S3cretValue",
    )]);
    check_err(&yaml, 8, "password");
    assert_no_secret(&yaml);
}

#[test]
fn an_empty_mapping_written_as_null_is_empty() {
    let head = BASE[..BASE.find("accounts:").expect("accounts")].to_owned();
    check_warn(&format!("{head}accounts:\n"), 1, "lists no accounts");
    let acc = &check_ok(&account_with("    settings:\n"))
        .inventory
        .accounts["etl_nightly"];
    assert!(acc.settings.is_empty());
}

#[test]
fn a_syntax_error_on_a_secret_line_does_not_show_it() {
    for url in [
        "url: postgres://u:S3cretValue@h/db: x",
        "url: \"postgres://u:S3cretValue@h/db",
        "url: [postgres://u:S3cretValue@h/db",
    ] {
        let yaml = edit(&[(
            "url: postgres://credrotd_admin@db1:5432/orders?sslmode=verify-full",
            url,
        )]);
        assert!(errors_of(&yaml).is_ok(), "{url} must be refused");
        assert_no_secret(&yaml);
    }
}

#[test]
fn a_lifetime_of_exactly_seven_days_is_allowed() {
    let yaml = account_with("    lifetime: 7d\n");
    let acc = &check_ok(&yaml).inventory.accounts["etl_nightly"];
    assert_eq!(acc.lifetime, Some(PRODUCTION_MAX_LIFETIME));
}

#[test]
fn an_invalid_overlap_does_not_hide_the_account_s_other_errors() {
    let yaml = account_with(
        "    overlap: soon\n    connection_limit: 0\n    settings: { role: postgres }\n",
    );
    let errors = errors_of(&yaml).unwrap_or_else(|why| panic!("{why}"));
    assert_eq!(errors.len(), 3, "got:\n{}", show(&errors));
    check_err(&yaml, END, "overlap: invalid duration");
    check_err(&yaml, END + 1, "connection_limit must be positive");
    check_err(&yaml, END + 2, "cannot be set per account");
}

#[test]
fn vault_and_aws_stores_are_validated_into_their_configs() {
    let yaml = edit(&[
        (
            "  local: { kind: file, dir: /run/credrotd/secrets }\n",
            "  local: { kind: file, dir: /run/credrotd/secrets }\n  \
             vault: { kind: vault, address: \"https://vault:8200\", namespace: team, ca_file: certs/ca.pem,\n           \
             auth: { method: approle, role_id_file: creds/role_id, secret_id_file: creds/secret_id } }\n  \
             aws: { kind: aws_secrets_manager, region: eu-west-1, kms_key_id: alias/credrotd }\n",
        ),
        ("store: local }", "store: [vault, aws] }"),
    ]);
    let inv = check_ok(&yaml).inventory;
    let StoreKind::Vault(v) = &inv.stores["vault"].kind else {
        panic!("vault is a vault store")
    };
    assert_eq!(v.mount, "secret");
    assert_eq!(v.namespace.as_deref(), Some("team"));
    assert!(v.ca_file.as_ref().unwrap().ends_with("certs/ca.pem"));
    let VaultAuth::AppRole {
        secret_id_file,
        mount,
        ..
    } = &v.auth
    else {
        panic!("approle auth")
    };
    assert!(secret_id_file.ends_with("creds/secret_id"));
    assert_eq!(mount, "approle");
    let StoreKind::Aws(a) = &inv.stores["aws"].kind else {
        panic!("aws is an aws store")
    };
    assert_eq!(a.region, "eu-west-1");
    assert_eq!(a.kms_key_id.as_deref(), Some("alias/credrotd"));
    assert_eq!(inv.accounts["etl_nightly"].stores, ["vault", "aws"]);
}

#[test]
fn aws_warns_when_a_schedule_writes_more_often_than_every_10_minutes() {
    let yaml = edit(&[
        (
            "{ kind: file, dir: /run/credrotd/secrets }",
            "{ kind: aws_secrets_manager, region: eu-west-1 }",
        ),
        (
            "    schedule: \"0 0 */6 * * *\"",
            "    schedule: \"0 */5 * * * *\"",
        ),
        ("overlap: 1h", "overlap: 1m"),
    ]);
    check_warn(&yaml, 18, "AWS advises at most about once per 10 minutes");
}

// ---------------------------------------------------------------------------
// TLS to databases: another host only over TLS that checks the server's
// certificate and name; loopback and Unix sockets are exempt.

/// The `url:` line of [`BASE`].
const PG_URL: &str = "url: postgres://credrotd_admin@db1:5432/orders?sslmode=verify-full";

/// A PostgreSQL URL, and `None` when production takes it, else a fragment of
/// the error (always on line 8, at the URL).
fn postgres_tls_cases() -> Vec<(&'static str, Option<&'static str>)> {
    vec![
        ("postgres://a@db1:5432/orders?sslmode=verify-full", None),
        (
            "postgres://a@db1:5432/orders?sslmode=Verify-Full&sslrootcert=/etc/credrotd/ca.pem",
            None,
        ),
        ("postgresql://a@db1/orders?ssl-mode=verify-full", None),
        // sqlx applies the query in order: the last mode wins.
        (
            "postgres://a@db1/orders?sslmode=disable&sslmode=verify-full",
            None,
        ),
        ("postgres://a@127.0.0.1:5432/orders", None),
        ("postgres://a@127.8.9.10/orders?sslmode=disable", None),
        ("postgres://a@localhost/orders", None),
        ("postgres://a@[::1]:5432/orders", None),
        ("postgres://a@%2Frun%2Fpostgresql/orders", None),
        ("postgres://a@db1/orders?host=/run/postgresql", None),
        ("postgres://a@db1/orders?host=127.0.0.1", None),
        ("postgres://a@db1/orders?hostaddr=127.0.0.1", None),
        (
            "postgres://a@db1:5432/orders",
            Some("the url sets no sslmode"),
        ),
        (
            "postgres://a@db1:5432/orders?sslmode=prefer",
            Some("sslmode=prefer goes on in cleartext"),
        ),
        (
            "postgres://a@db1:5432/orders?sslmode=disable",
            Some("everything in cleartext"),
        ),
        (
            "postgres://a@db1:5432/orders?sslmode=allow",
            Some("everything in cleartext"),
        ),
        (
            "postgres://a@db1:5432/orders?sslmode=REQUIRE",
            Some("sslmode=require encrypts but accepts any certificate"),
        ),
        // sqlx adds sslrootcert to the system's CAs and checks no name.
        (
            "postgres://a@db1:5432/orders?sslmode=verify-ca&sslrootcert=/etc/credrotd/ca.pem",
            Some("verify-ca checks no host name and trusts the system's root CAs"),
        ),
        (
            "postgres://a@db1/orders?sslmode=verify-full&ssl-mode=require",
            Some("sslmode=require"),
        ),
        // `host=` replaces the authority's host.
        ("postgres://a@127.0.0.1/orders?host=db2", Some("to \"db2\"")),
        ("postgres://a@10.0.0.5/orders", Some("to \"10.0.0.5\"")),
        (
            "postgres://a@localhost.example.com/orders",
            Some("localhost.example.com"),
        ),
        ("postgres://a@[::2]/orders", Some("[::2]")),
        // Without a host sqlx takes PGHOST or a socket it finds: unknown here.
        ("postgres:///orders", Some("the url names no host")),
        (
            "postgres:///orders?user=a&sslmode=require",
            Some("the url names no host"),
        ),
    ]
}

#[test]
fn production_requires_verified_tls_to_postgres_on_another_host() {
    for (url, refused) in postgres_tls_cases() {
        let yaml = edit(&[(PG_URL, &format!("url: {url}"))]);
        match refused {
            None => {
                check_ok(&yaml);
                check_ok(&in_env("staging", &yaml));
            }
            Some(needle) => {
                check_one_err_at(&yaml, 8, url, needle);
                check_one_err_at(&yaml, 8, url, "database \"orders\": ");
                check_one_err_at(&yaml, 8, url, "add sslmode=verify-full to the url");
                for env in ["staging", "development"] {
                    check_warn(
                        &in_env(env, &yaml),
                        8,
                        "production would refuse this: database \"orders\": ",
                    );
                    check_warn(&in_env(env, &yaml), 8, needle);
                }
            }
        }
    }
}

#[test]
fn the_tls_error_names_the_host_but_never_the_urls_password() {
    for url in [
        "url: postgres://u:S3cretValue@db1/orders?sslmode=require",
        "url: postgres://u@db1/orders?password=S3cretValue",
        "url: postgres://u:S3cretValue@/orders",
        "url: postgres://u:S3cretValue@db1:99999/orders",
    ] {
        let yaml = edit(&[(PG_URL, url)]);
        assert!(errors_of(&yaml).is_ok(), "{url} must be refused");
        assert_no_secret(&yaml);
        assert_no_secret(&in_env("development", &yaml));
    }
    check_err(
        &edit(&[(PG_URL, "url: postgres://u:S3cretValue@db1/orders")]),
        8,
        "the connection to \"db1\" is not verified TLS",
    );
}

#[test]
fn an_unknown_sslmode_or_an_unparsable_url_is_an_error_everywhere() {
    for (url, token, needle) in [
        (
            "url: postgres://a@db1/orders?sslmode=verify_full",
            "postgres://",
            "url: unknown sslmode \"verify_full\"; expected one of disable, allow, prefer, require, verify-ca, verify-full",
        ),
        (
            "url: postgres://a@127.0.0.1/orders?ssl-mode=on",
            "postgres://",
            "url: unknown sslmode \"on\"",
        ),
        (
            "url: postgres://a@db1:99999/orders?sslmode=verify-full",
            "postgres://",
            "url: not a valid URL (invalid port number)",
        ),
    ] {
        let yaml = edit(&[(PG_URL, url)]);
        check_one_err_at(&yaml, 8, token, needle);
        check_err(&in_env("development", &yaml), 8, needle);
    }
}

#[test]
fn a_relative_root_certificate_path_is_a_warning() {
    let yaml = edit(&[(
        PG_URL,
        "url: postgres://a@db1/orders?sslmode=verify-full&sslrootcert=certs/ca.pem",
    )]);
    check_warn(
        &yaml,
        8,
        "url: sslrootcert \"certs/ca.pem\" is a relative path, which credrotd opens from its working directory",
    );
    check_ok(&edit(&[(
        PG_URL,
        "url: postgres://a@db1/orders?sslmode=verify-full&sslrootcert=/etc/credrotd/ca.pem",
    )]));
}

/// [`BASE`] turned into a MariaDB (or MySQL) inventory with MySQL grants.
fn mysql_base(engine: &str) -> String {
    edit(&[
        ("engine: postgres", &format!("engine: {engine}")),
        (
            "url: postgres://credrotd_admin@db1:5432/orders?sslmode=verify-full",
            "url: mysql://credrotd_admin@db1:3306/orders?ssl-mode=VERIFY_IDENTITY",
        ),
        (
            "      - { schema: analytics, privileges: [USAGE] }\n",
            "      - { schema: analytics, privileges: [CREATE TEMPORARY TABLES, LOCK   TABLES] }\n",
        ),
        (
            "      - { schema: analytics, sequences: \"*\", privileges: [USAGE] }\n",
            "      - { schema: shop, procedures: [refresh], privileges: [EXECUTE] }\n",
        ),
    ])
}

#[test]
fn mysql_and_mariadb_inventories_parse_with_their_privileges() {
    for engine in ["mysql", "mariadb"] {
        let checked = run(&mysql_base(engine)).unwrap_or_else(|e| panic!("{engine}: {e}"));
        assert!(checked.warnings.is_empty(), "{}", show(&checked.warnings));
        let inv = checked.inventory;
        let db = &inv.databases["orders"];
        assert_eq!(db.engine.as_str(), engine);
        assert_eq!(db.hosts, vec!["%".to_owned()], "hosts default to %");
        let grants = &inv.accounts["etl_nightly"].grants;
        assert_eq!(grants[0].kind, ObjectKind::Schema);
        assert_eq!(
            grants[0].privileges.iter().copied().collect::<Vec<_>>(),
            ["CREATE TEMPORARY TABLES", "LOCK TABLES"],
            "multi-word privileges, white space collapsed"
        );
        assert_eq!(grants[3].kind, ObjectKind::Procedure);
        assert_eq!(
            grants[3].objects,
            Some(Objects::Named(vec!["refresh".into()]))
        );
    }
    let hosts = mysql_base("mariadb").replacen(
        "    password_file: secrets/orders\n",
        "    password_file: secrets/orders\n    hosts: [\"10.0.0.%\", localhost]\n",
        1,
    );
    let inv = run(&hosts).unwrap().inventory;
    assert_eq!(inv.databases["orders"].hosts, ["10.0.0.%", "localhost"]);
}

#[test]
fn what_mysql_does_not_have_is_refused_where_it_is_written() {
    let base = mysql_base("mariadb");
    let with = |from: &str, to: &str| {
        assert_eq!(base.matches(from).count(), 1, "{from}");
        base.replacen(from, to, 1)
    };
    // Line numbers as in BASE (the account's grants start at line 20).
    check_err(
        &with(
            "      - { schema: shop, procedures: [refresh], privileges: [EXECUTE] }\n",
            "      - { schema: shop, sequences: \"*\", privileges: [USAGE] }\n",
        ),
        23,
        "no sequence privileges",
    );
    check_err(
        &with(
            "privileges: [CREATE TEMPORARY TABLES, LOCK   TABLES]",
            "privileges: [USAGE]",
        ),
        20,
        "does not apply to a schema",
    );
    check_err(
        &with("privileges: [select, INSERT]", "privileges: [EXECUTE]"),
        21,
        "does not apply to tables",
    );
    check_err(
        &format!("{base}    settings: {{ app.tenant_id: \"42\" }}\n"),
        END,
        "apply to PostgreSQL only",
    );
    for (host, why) in [
        ("\"\"", "must not be empty"),
        ("DB1", "must be lowercase"),
        ("\"a'b\"", "may hold only"),
    ] {
        check_err(
            &with(
                "    password_file: secrets/orders\n",
                &format!("    password_file: secrets/orders\n    hosts: [\"%\", {host}]\n"),
            ),
            10,
            why,
        );
    }
    check_err(
        &with("ssl-mode=VERIFY_IDENTITY", "ssl-mode=SOMETIMES"),
        8,
        "unknown ssl-mode",
    );
    // An ephemeral login is `<account>_YYYYMMDDHHMMSS`: 11 + 15 = 26 fits
    // MySQL's 32; a 20-character account does not, but fits MariaDB's 80.
    let long = |engine: &str| mysql_base(engine).replace("etl_nightly:", "etl_nightly_reporting:");
    check_err(&long("mysql"), ACCOUNT, "longer than the 32 MySQL allows");
    run(&long("mariadb")).unwrap();
    // Static accounts: MariaDB has one password per user, MySQL 8 can overlap.
    let stat = |engine: &str| {
        mysql_base(engine).replacen(
            "    strategy: ephemeral\n",
            "    strategy: static\n    role: legacy_svc\n",
            1,
        )
    };
    let errors = errors_of(&stat("mariadb")).unwrap();
    assert!(
        errors
            .iter()
            .any(|d| d.message.contains("no overlap on MariaDB")),
        "{}",
        show(&errors)
    );
    let inv = run(&stat("mysql")).unwrap().inventory;
    assert_eq!(
        inv.accounts["etl_nightly"].overlap,
        Duration::from_secs(3600)
    );
    // PostgreSQL keeps its rules: no procedures.
    check_err(
        &edit(&[(
            "      - { schema: analytics, sequences: \"*\", privileges: [USAGE] }\n",
            "      - { schema: shop, procedures: [refresh], privileges: [EXECUTE] }\n",
        )]),
        23,
        "list procedures under `functions`",
    );
}

// ---------------------------------------------------------------------------
// MySQL and MariaDB, rule by rule, each error at its line and column.

/// A small valid production inventory for `engine: mysql`. Its line numbers matter:
///
/// ```text
///  1 version             10 stores:              19 grants:
///  2 environment         11   local: {...}       20   database-level grant
///  3 state               12 accounts:            21   tables "*" grant
///  4 defaults: {...}     13   etl_nightly:       22   tables [orders] grant
///  5 databases:          14     database         23   functions [add_one]
///  6   shop:             15     purpose          24   procedures [refresh]
///  7     engine          16     owner            25 (first line added by `my_with`)
///  8     url             17     strategy
///  9     password_file   18     schedule
/// ```
const MYSQL: &str = r#"version: 1
environment: production
state: sqlite:///var/lib/credrotd/state.db
defaults: { schedule: "0 0 3 * * *", overlap: 1h, store: local }
databases:
  shop:
    engine: mysql
    url: mysql://credrotd_admin@db1:3306/shop?ssl-mode=verify_identity
    password_file: secrets/shop
stores:
  local: { kind: file, dir: /run/credrotd/secrets }
accounts:
  etl_nightly:
    database: shop
    purpose: Nightly ETL into the shop database
    owner: data-platform
    strategy: ephemeral
    schedule: "0 0 */6 * * *"
    grants:
      - { schema: shop, privileges: [CREATE TEMPORARY TABLES, lock   tables] }
      - { schema: shop, tables: "*", privileges: [SELECT, INSERT] }
      - { schema: shop, tables: [orders], privileges: [SELECT, "SHOW\tVIEW"] }
      - { schema: shop, functions: [add_one], privileges: [EXECUTE] }
      - { schema: shop, procedures: [refresh], privileges: [execute] }
"#;

/// The first line that [`my_with`] adds to [`MYSQL`].
const MY_END: u64 = 25;

/// The `url:` line of [`MYSQL`].
const MY_URL: &str = "url: mysql://credrotd_admin@db1:3306/shop?ssl-mode=verify_identity";

/// [`MYSQL`] with `engine: <engine>` and each `(from, to)` replacement applied
/// (each `from` must occur exactly once).
fn my(engine: &str, pairs: &[(&str, &str)]) -> String {
    let mut text = MYSQL.replacen("engine: mysql", &format!("engine: {engine}"), 1);
    for (from, to) in pairs {
        assert_eq!(
            text.matches(from).count(),
            1,
            "my: {from:?} must occur exactly once in:\n{text}"
        );
        text = text.replacen(from, to, 1);
    }
    text
}

/// [`MYSQL`] on `engine` with `lines` added to the end of the account.
fn my_with(engine: &str, lines: &str) -> String {
    format!("{}{lines}", my(engine, &[]))
}

/// [`MYSQL`] on `engine` with `hosts: <list>` on line 10.
fn my_hosts(engine: &str, list: &str) -> String {
    my(
        engine,
        &[(
            "    password_file: secrets/shop\n",
            &format!("    password_file: secrets/shop\n    hosts: {list}\n"),
        )],
    )
}

/// [`MYSQL`] on `engine` with `strategy: static`, `role: <role>` and `extra`.
fn my_static(engine: &str, role: &str, extra: &str) -> String {
    my_with(engine, &format!("    role: {role}\n{extra}")).replacen(
        "    strategy: ephemeral\n",
        "    strategy: static\n",
        1,
    )
}

/// Asserts that `yaml` is invalid with exactly one error, whose message contains
/// `needle`, located at `line` and at the column where `token` starts on that
/// line (`token` must occur there once).
#[track_caller]
fn check_one_err_at(yaml: &str, line: u64, token: &str, needle: &str) {
    let text = yaml.lines().nth(line as usize - 1).unwrap_or("");
    assert_eq!(
        text.matches(token).count(),
        1,
        "{token:?} must occur once on line {line}: {text:?}"
    );
    let column = text.find(token).expect("token") as u64 + 1;
    let errors = errors_of(yaml).unwrap_or_else(|why| panic!("{why}\n--- inventory ---\n{yaml}"));
    assert!(
        errors.len() == 1
            && errors[0].file == Path::new("inv.yaml")
            && (errors[0].line, errors[0].column) == (line, column)
            && errors[0].message.contains(needle),
        "expected one error at {line}:{column} ({token:?}) containing {needle:?}; got:\n{}\n--- inventory ---\n{yaml}",
        show(&errors)
    );
}

#[test]
fn mysql_inventory_parses_database_table_and_routine_grants() {
    let inv = check_ok(MYSQL).inventory;
    let db = &inv.databases["shop"];
    assert_eq!(db.engine, EngineKind::Mysql);
    assert_eq!(db.engine.max_name_len(), 32);
    assert_eq!(db.hosts, ["%"], "hosts default to [\"%\"]");
    let acc = &inv.accounts["etl_nightly"];
    assert!(!acc.allow_ddl);
    let grant = |kind, objects: Option<Objects>, p: &[&'static str]| Grant {
        schema: "shop".into(),
        kind,
        objects,
        privileges: privs(p),
        row_filter: None,
    };
    let named = |n: &str| Some(Objects::Named(vec![n.into()]));
    assert_eq!(
        acc.grants,
        [
            // No objects: the database (`shop.*`), with database-level privileges;
            // multi-word names match whatever their white space and case.
            grant(
                ObjectKind::Schema,
                None,
                &["CREATE TEMPORARY TABLES", "LOCK TABLES"]
            ),
            grant(ObjectKind::Table, Some(Objects::All), &["SELECT", "INSERT"]),
            grant(ObjectKind::Table, named("orders"), &["SELECT", "SHOW VIEW"]),
            grant(ObjectKind::Function, named("add_one"), &["EXECUTE"]),
            grant(ObjectKind::Procedure, named("refresh"), &["EXECUTE"]),
        ]
    );
}

#[test]
fn mariadb_inventory_parses_with_its_url_hosts_and_80_character_names() {
    // A 40-character account: `<account>_YYYYMMDDHHMMSS` is 55 characters, more
    // than MySQL's 32, within MariaDB's 80.
    let forty = "a".repeat(40);
    let yaml = my(
        "mariadb",
        &[
            (
                MY_URL,
                "url: mariadb://credrotd_admin@db1:3306/shop?ssl-mode=VERIFY_IDENTITY",
            ),
            (
                "    password_file: secrets/shop\n",
                "    password_file: secrets/shop\n    hosts: [\"10.0.%\", app.example.com, localhost, \"::1\", 10.1.0.0/255.255.0.0, my_host-1]\n",
            ),
            ("  etl_nightly:", &format!("  {forty}:")),
        ],
    );
    let inv = check_ok(&yaml).inventory;
    let db = &inv.databases["shop"];
    assert_eq!(db.engine, EngineKind::Mariadb);
    assert_eq!(db.engine.max_name_len(), 80);
    assert_eq!(
        db.url,
        "mariadb://credrotd_admin@db1:3306/shop?ssl-mode=VERIFY_IDENTITY"
    );
    assert_eq!(
        db.hosts,
        [
            "10.0.%",
            "app.example.com",
            "localhost",
            "::1",
            "10.1.0.0/255.255.0.0",
            "my_host-1"
        ],
        "explicit hosts are kept, in order"
    );
    let acc = &inv.accounts[&forty];
    assert_eq!(acc.grants[0].kind, ObjectKind::Schema);
    assert_eq!(acc.grants[4].kind, ObjectKind::Procedure);
    // The same on `engine: mysql` (the account is on line 14 after `hosts`).
    check_one_err_at(
        &yaml.replacen("engine: mariadb", "engine: mysql", 1),
        14,
        &forty,
        "would be 55 characters, longer than the 32 MySQL allows",
    );
}

#[test]
fn mysql_urls_need_a_mysql_scheme_and_a_known_ssl_mode() {
    for engine in ["mysql", "mariadb"] {
        check_one_err_at(
            &my(
                engine,
                &[(MY_URL, "url: postgres://credrotd_admin@db1:5432/shop")],
            ),
            8,
            "postgres://",
            "url: expected mysql://user@host:port/dbname, found a URL with scheme \"postgres\"",
        );
        // Every mode sqlx knows, in any case, under either spelling of the key:
        // on another host, production takes only VERIFY_IDENTITY (the TLS
        // cases are in `production_requires_verified_tls_to_mysql_on_another_host`).
        for mode in [
            "DISABLED",
            "preferred",
            "Required",
            "VERIFY_CA",
            "verify_identity",
        ] {
            for key in ["ssl-mode", "sslmode"] {
                let url = format!("url: mariadb://credrotd_admin@db1:3306/shop?{key}={mode}");
                let yaml = my(engine, &[(MY_URL, &url)]);
                if mode.eq_ignore_ascii_case("verify_identity") {
                    check_ok(&yaml);
                } else {
                    check_one_err_at(&yaml, 8, "mariadb://", "is not verified TLS");
                }
            }
        }
        for query in [
            "ssl-mode=sometimes",
            "sslmode=verify-full",
            "ssl-mode=REQUIRED&sslmode=on",
        ] {
            let url = format!("url: mysql://credrotd_admin@db1:3306/shop?{query}");
            check_one_err_at(
                &my(engine, &[(MY_URL, &url)]),
                8,
                "mysql://",
                "url: unknown ssl-mode",
            );
        }
    }
    // PostgreSQL keeps its scheme.
    check_one_err_at(
        &edit(&[(
            "url: postgres://credrotd_admin@db1:5432/orders?sslmode=verify-full",
            "url: mariadb://credrotd_admin@db1:3306/orders",
        )]),
        8,
        "mariadb://",
        "url: expected postgres://user@host:port/dbname, found a URL with scheme \"mariadb\"",
    );
}

#[test]
fn production_requires_verified_tls_to_mysql_on_another_host() {
    // (url, None when production takes it, else a fragment of the error)
    let cases: &[(&str, Option<&str>)] = &[
        ("mysql://a@db1:3306/shop?ssl-mode=VERIFY_IDENTITY", None),
        (
            "mysql://a@db1:3306/shop?sslmode=verify_identity&ssl-ca=/etc/credrotd/ca.pem",
            None,
        ),
        (
            "mysql://a@db1/shop?ssl-mode=DISABLED&ssl-mode=Verify_Identity",
            None,
        ),
        ("mysql://a@127.0.0.1:3306/shop", None),
        ("mysql://a@localhost/shop?ssl-mode=DISABLED", None),
        ("mysql://a@[::1]/shop", None),
        // sqlx's default host is localhost.
        ("mysql:///shop", None),
        ("mysql://a@db1/shop?socket=/run/mysqld/mysqld.sock", None),
        ("mysql://a@db1:3306/shop", Some("the url sets no ssl-mode")),
        (
            "mysql://a@db1/shop?ssl-mode=PREFERRED",
            Some("ssl-mode=PREFERRED goes on in cleartext"),
        ),
        (
            "mysql://a@db1/shop?ssl-mode=disabled",
            Some("everything in cleartext"),
        ),
        (
            "mysql://a@db1/shop?ssl-mode=REQUIRED",
            Some("accepts any certificate"),
        ),
        (
            "mysql://a@db1/shop?ssl-mode=VERIFY_CA&ssl-ca=/etc/credrotd/ca.pem",
            Some("VERIFY_CA checks no host name and trusts the system's root CAs"),
        ),
        (
            "mysql://a@db1/shop?ssl-mode=VERIFY_IDENTITY&sslmode=REQUIRED",
            Some("REQUIRED"),
        ),
        ("mysql://a@10.1.2.3/shop", Some("to \"10.1.2.3\"")),
    ];
    for engine in ["mysql", "mariadb"] {
        for (url, refused) in cases {
            let url = url.replacen("mysql://", &format!("{engine}://"), 1);
            let yaml = my(engine, &[(MY_URL, &format!("url: {url}"))]);
            match refused {
                None => {
                    check_ok(&yaml);
                }
                Some(needle) => {
                    check_one_err_at(&yaml, 8, &url, needle);
                    check_one_err_at(&yaml, 8, &url, "database \"shop\": ");
                    check_one_err_at(&yaml, 8, &url, "add ssl-mode=VERIFY_IDENTITY to the url");
                    let staging =
                        yaml.replacen("environment: production", "environment: staging", 1);
                    check_warn(
                        &staging,
                        8,
                        "production would refuse this: database \"shop\": ",
                    );
                    check_warn(&staging, 8, needle);
                }
            }
        }
    }
}

#[test]
fn mysql_hosts_are_refused_where_they_are_written() {
    // (hosts, the refused one, message)
    for (list, token, needle) in [
        (
            "[]",
            "[]",
            "`hosts` lists no host; leave it out for [\"%\"]",
        ),
        ("[\"%\", \"\"]", "\"\"", "host \"\" must not be empty"),
        (
            "[\"%\", Db1.example.com]",
            "Db1",
            "host \"Db1.example.com\" must be lowercase",
        ),
        (
            "[\"%\", \"db1'\"]",
            "\"db1'\"",
            "may hold only letters, digits and % _ . - : /",
        ),
        ("[\"%\", \"db 1\"]", "\"db 1\"", "may hold only"),
        ("[\"%\", \"db@1\"]", "\"db@1\"", "may hold only"),
        ("[\"%\", \"db1;\"]", "\"db1;\"", "may hold only"),
        (
            "[\"%\", localhost, \"localhost\"]",
            "\"localhost\"",
            "host \"localhost\" is listed twice",
        ),
    ] {
        for engine in ["mysql", "mariadb"] {
            check_one_err_at(&my_hosts(engine, list), 10, token, needle);
        }
    }
    let long = "h".repeat(256);
    check_one_err_at(
        &my_hosts("mysql", &format!("[{long}]")),
        10,
        &long,
        "longer than 255 bytes",
    );
    let longest = "h".repeat(255);
    let inv = check_ok(&my_hosts("mysql", &format!("[{longest}]"))).inventory;
    assert_eq!(inv.databases["shop"].hosts, [longest]);
}

#[test]
fn mysql_privileges_are_checked_per_object_kind() {
    // (line, replaced, replacement, the refused privilege, message)
    for (line, from, to, token, needle) in [
        // PostgreSQL's schema privilege; a table privilege MySQL does not have.
        (
            20,
            "[CREATE TEMPORARY TABLES, lock   tables]",
            "[USAGE]",
            "USAGE",
            "privilege \"USAGE\" does not apply to a schema; expected one of SELECT",
        ),
        (
            21,
            "[SELECT, INSERT]",
            "[SELECT, TRUNCATE]",
            "TRUNCATE",
            "privilege \"TRUNCATE\" does not apply to tables",
        ),
        // Database level only: not on tables, named or "*".
        (
            21,
            "[SELECT, INSERT]",
            "[SELECT, Lock Tables]",
            "Lock",
            "privilege \"Lock Tables\" does not apply to tables",
        ),
        (
            22,
            "[SELECT, \"SHOW\\tVIEW\"]",
            "[SELECT, EXECUTE]",
            "EXECUTE",
            "privilege \"EXECUTE\" does not apply to tables",
        ),
        // Routines take EXECUTE and ALTER ROUTINE only.
        (
            23,
            "functions: [add_one], privileges: [EXECUTE]",
            "functions: [add_one], privileges: [SELECT]",
            "SELECT",
            "privilege \"SELECT\" does not apply to functions; expected one of EXECUTE, ALTER ROUTINE",
        ),
        (
            24,
            "[execute]",
            "[execute, CREATE ROUTINE]",
            "CREATE ROUTINE",
            "privilege \"CREATE ROUTINE\" does not apply to procedures; expected one of EXECUTE, ALTER ROUTINE",
        ),
    ] {
        check_one_err_at(&my("mysql", &[(from, to)]), line, token, needle);
    }
}

#[test]
fn mysql_ddl_privileges_need_allow_ddl_in_production() {
    // (grant line, replaced, replacement, the DDL privilege)
    for (line, from, to, privilege) in [
        (20, "lock   tables]", "lock   tables, Drop]", "DROP"),
        (20, "lock   tables]", "lock   tables, event]", "EVENT"),
        (
            20,
            "lock   tables]",
            "lock   tables, create routine]",
            "CREATE ROUTINE",
        ),
        (21, "[SELECT, INSERT]", "[SELECT, ALTER]", "ALTER"),
        (21, "[SELECT, INSERT]", "[SELECT, INDEX]", "INDEX"),
        (
            22,
            "\"SHOW\\tVIEW\"]",
            "\"SHOW\\tVIEW\", \"create  view\"]",
            "CREATE VIEW",
        ),
        (24, "[execute]", "[execute, alter routine]", "ALTER ROUTINE"),
    ] {
        let yaml = my("mysql", &[(from, to)]);
        // Located at the grant's privilege list.
        let list = match line {
            20 => "[CREATE",
            24 => "[execute",
            _ => "[SELECT",
        };
        check_one_err_at(
            &yaml,
            line,
            list,
            &format!("DDL privileges ({privilege}) need `allow_ddl: true` on the account"),
        );
        check_warn(
            &in_env("staging", &yaml),
            line,
            "production would refuse this",
        );
        let yaml = format!("{yaml}    allow_ddl: true\n");
        let acc = &check_ok(&yaml).inventory.accounts["etl_nightly"];
        let grant = &acc.grants[line as usize - 20];
        assert!(
            grant.privileges.contains(privilege),
            "{privilege}: {grant:?}"
        );
    }
}

#[test]
fn mysql_refuses_sequences_and_settings() {
    for engine in ["mysql", "mariadb"] {
        check_one_err_at(
            &my(
                engine,
                &[(
                    "tables: [orders], privileges: [SELECT, \"SHOW\\tVIEW\"]",
                    "sequences: \"*\", privileges: [SELECT]",
                )],
            ),
            22,
            "\"*\"",
            "MySQL and MariaDB have no sequence privileges",
        );
        check_one_err_at(
            &my_with(engine, "    settings: { app.tenant_id: \"42\" }\n"),
            MY_END,
            "app.tenant_id",
            "`settings` apply to PostgreSQL only",
        );
    }
}

#[test]
fn mysql_login_names_fit_the_server_s_limit() {
    let renamed = |engine: &str, name: &str, strategy: &str| {
        my(
            engine,
            &[
                ("  etl_nightly:", &format!("  {name}:")),
                ("strategy: ephemeral", &format!("strategy: {strategy}")),
            ],
        )
    };
    // Ephemeral: `<account>_YYYYMMDDHHMMSS`, the account name plus 15.
    let e17 = "e".repeat(17);
    let e18 = "e".repeat(18);
    check_ok(&renamed("mysql", &e17, "ephemeral"));
    check_one_err_at(
        &renamed("mysql", &e18, "ephemeral"),
        13,
        &e18,
        &format!("login name \"{e18}_YYYYMMDDHHMMSS\" would be 33 characters, longer than the 32 MySQL allows (MariaDB takes 80: write `engine: mariadb` if the server is MariaDB); use a shorter account name"),
    );
    check_ok(&renamed("mariadb", &e18, "ephemeral"));
    // Alternating: `<account>_a`, the account name plus 2.
    let a30 = "a".repeat(30);
    let a31 = "a".repeat(31);
    check_ok(&renamed("mysql", &a30, "alternating"));
    check_one_err_at(
        &renamed("mysql", &a31, "alternating"),
        13,
        &a31,
        &format!("login name \"{a31}_a\" would be 33 characters"),
    );
    check_ok(&renamed("mariadb", &"a".repeat(40), "alternating"));
    // Static: the existing user, located at its `role`, and the scoped role,
    // which is the account name.
    let r32 = "r".repeat(32);
    let r33 = "r".repeat(33);
    check_ok(&my_static("mysql", &r32, ""));
    check_one_err_at(
        &my_static("mysql", &r33, ""),
        MY_END,
        &r33,
        &format!("static user \"{r33}\" would be 33 characters, longer than the 32 MySQL allows"),
    );
    check_ok(&my_static("mariadb", &r33, "    overlap: 0\n"));
    let s33 = "s".repeat(33);
    check_one_err_at(
        &my_static("mysql", "legacy_app", "").replacen("  etl_nightly:", &format!("  {s33}:"), 1),
        13,
        &s33,
        &format!("scoped role \"{s33}\" would be 33 characters"),
    );
}

#[test]
fn static_accounts_overlap_only_on_mysql_8() {
    // MySQL 8 keeps the old password (RETAIN CURRENT PASSWORD): the overlap of
    // `defaults` applies.
    let acc = &check_ok(&my_static("mysql", "legacy_app", ""))
        .inventory
        .accounts["etl_nightly"];
    assert_eq!(acc.overlap, Duration::from_secs(3600));
    // MariaDB has one password per user: production wants `overlap: 0` written,
    // and the message names the server. Located at the overlap of `defaults`.
    let mariadb = my_static("mariadb", "legacy_app", "");
    check_one_err_at(
        &mariadb,
        4,
        "1h",
        "strategy static has no overlap on MariaDB (the old password stops working at once); write `overlap: 0` to acknowledge it",
    );
    let checked = check_warn(&in_env("staging", &mariadb), 4, "no overlap on MariaDB");
    assert_eq!(
        checked.inventory.accounts["etl_nightly"].overlap,
        Duration::ZERO
    );
    let acc = &check_ok(&my_static("mariadb", "legacy_app", "    overlap: 0\n"))
        .inventory
        .accounts["etl_nightly"];
    assert_eq!(acc.overlap, Duration::ZERO);
    // PostgreSQL: the same rule, naming PostgreSQL.
    let pg = format!(
        "{}    role: legacy_app\n",
        edit(&[("    strategy: ephemeral", "    strategy: static")])
    );
    check_one_err_at(&pg, 4, "1h", "strategy static has no overlap on PostgreSQL");
}

#[test]
fn postgres_refuses_the_mysql_keys_and_privileges() {
    // `procedures`, at its list.
    check_one_err_at(
        &account_with("      - { schema: api, procedures: [refresh], privileges: [EXECUTE] }\n"),
        END,
        "[refresh]",
        "`procedures` applies to MySQL and MariaDB; on PostgreSQL list procedures under `functions`",
    );
    // `hosts`, at its list.
    let hosts = (
        "    password_file: secrets/orders\n",
        "    password_file: secrets/orders\n    hosts: [\"%\"]\n",
    );
    check_one_err_at(
        &edit(&[hosts]),
        10,
        "[",
        "`hosts` applies to engine mysql or mariadb only",
    );
    // An unknown engine is the one error, not `hosts` too.
    check_one_err_at(
        &edit(&[("engine: postgres", "engine: mysq"), hosts]),
        7,
        "mysq",
        "unknown engine \"mysq\"; expected postgres, mysql or mariadb",
    );
    // MySQL's privilege names are not PostgreSQL's.
    for (line, from, to, token, needle) in [
        (
            21,
            "[select, INSERT]",
            "[select, ALTER]",
            "ALTER",
            "privilege \"ALTER\" does not apply to tables",
        ),
        (
            21,
            "[select, INSERT]",
            "[select, CREATE VIEW]",
            "CREATE VIEW",
            "privilege \"CREATE VIEW\" does not apply to tables",
        ),
        (
            20,
            "analytics, privileges: [USAGE] }",
            "analytics, privileges: [LOCK TABLES] }",
            "LOCK TABLES",
            "privilege \"LOCK TABLES\" does not apply to a schema; expected one of USAGE, CREATE",
        ),
    ] {
        check_one_err_at(&edit(&[(from, to)]), line, token, needle);
    }
    // A PostgreSQL function takes EXECUTE only.
    check_one_err_at(
        &account_with("      - { schema: api, functions: [f], privileges: [ALTER ROUTINE] }\n"),
        END,
        "ALTER ROUTINE",
        "privilege \"ALTER ROUTINE\" does not apply to functions; expected one of EXECUTE",
    );
    assert!(check_ok(BASE).inventory.databases["orders"]
        .hosts
        .is_empty());
}

#[test]
fn all_privileges_on_mysql_is_every_mysql_privilege_of_the_kind() {
    let yaml = my(
        "mysql",
        &[
            ("[CREATE TEMPORARY TABLES, lock   tables]", "[all]"),
            ("[SELECT, INSERT]", "[All   Privileges]"),
            ("[execute]", "[ALL]"),
        ],
    );
    // In production, also with `allow_ddl` (ALL holds DDL privileges).
    let one = yaml
        .replace("[all]", "[SELECT]")
        .replace("[ALL]", "[EXECUTE]");
    check_one_err_at(
        &format!("{one}    allow_ddl: true\n"),
        21,
        "All",
        "ALL PRIVILEGES is not least privilege",
    );
    let yaml = format!("{}    allow_ddl: true\n", in_env("development", &yaml));
    let checked = check_warn(&yaml, 21, "ALL PRIVILEGES is not least privilege");
    assert_eq!(checked.warnings.len(), 3, "{}", show(&checked.warnings));
    let grants = &checked.inventory.accounts["etl_nightly"].grants;
    assert_eq!(grants[0].privileges, privs(MYSQL_DATABASE_PRIVILEGES));
    assert_eq!(grants[1].privileges, privs(MYSQL_TABLE_PRIVILEGES));
    assert_eq!(grants[4].privileges, privs(&["EXECUTE", "ALTER ROUTINE"]));
}

#[test]
fn row_filters_are_kept_on_named_postgresql_table_grants() {
    let inv = check_ok(&account_with(
        "      - { schema: public, tables: [orders], privileges: [SELECT, UPDATE], row_filter: \"tenant_id = current_setting('app.tenant')::int\" }\n",
    ))
    .inventory;
    let g = inv.accounts["etl_nightly"].grants.last().unwrap();
    assert_eq!(
        g.row_filter.as_deref(),
        Some("tenant_id = current_setting('app.tenant')::int")
    );
    // Parentheses and quotes that balance are fine.
    check_ok(&account_with(
        "      - { schema: public, tables: [orders], privileges: [SELECT], row_filter: \"(a = ')' OR b IN (1, 2))\" }\n",
    ));
}

#[test]
fn row_filters_that_do_not_apply_or_could_escape_using_are_refused_where_written() {
    let grant = |objects: &str, privileges: &str, filter: &str| {
        account_with(&format!(
            "      - {{ schema: public, {objects}privileges: [{privileges}], row_filter: \"{filter}\" }}\n"
        ))
    };
    for (yaml, filter, needle) in [
        (grant("", "USAGE", "a = 1"), "a = 1", "not to a schema"),
        (
            grant("tables: \"*\", ", "SELECT", "a = 1"),
            "a = 1",
            "list the tables",
        ),
        (
            grant("sequences: [s], ", "USAGE", "a = 1"),
            "a = 1",
            "not to sequence",
        ),
        (
            grant("tables: [t], ", "SELECT, TRUNCATE", "a = 1"),
            "a = 1",
            "TRUNCATE ignores row-level security",
        ),
        (
            grant("tables: [t], ", "REFERENCES", "a = 1"),
            "a = 1",
            "needs SELECT, INSERT, UPDATE or DELETE",
        ),
        (grant("tables: [t], ", "SELECT", "   "), "   ", "is empty"),
        (
            grant("tables: [t], ", "SELECT", "a = 1; DROP TABLE t"),
            "a = 1; DROP TABLE t",
            "may not contain `;`",
        ),
        (
            grant("tables: [t], ", "SELECT", "a = 1) WITH CHECK (true"),
            "a = 1) WITH CHECK (true",
            "closes a parenthesis",
        ),
        (
            grant("tables: [t], ", "SELECT", "(a = 1"),
            "(a = 1",
            "leaves a parenthesis open",
        ),
        (
            grant("tables: [t], ", "SELECT", "a = 1 -- x"),
            "a = 1 -- x",
            "comment",
        ),
        (
            grant("tables: [t], ", "SELECT", "a = $$x$$"),
            "a = $$x$$",
            "may not contain `$`",
        ),
        (
            grant("tables: [t], ", "SELECT", "a = 'x"),
            "a = 'x",
            "unterminated quote",
        ),
    ] {
        // Located at the expression (in development: TRUNCATE's DDL policy
        // is a warning there, not a second error).
        let yaml = in_env("development", &yaml);
        check_one_err_at(&yaml, END, &format!("\"{filter}\""), needle);
    }
    // MySQL and MariaDB have no row-level security.
    check_one_err_at(
        &my_with(
            "mariadb",
            "      - { schema: shop, tables: [orders], privileges: [SELECT], row_filter: \"a = 1\" }\n",
        ),
        MY_END,
        "\"a = 1\"",
        "MySQL and MariaDB do not have",
    );
}

/// More YAML nodes than the parser's default budget (250,000) are read: an
/// inventory of 10,000 accounts with two grants each has about 330,000, and the
/// default refused it. (One long table list here: cheaper to validate.)
#[test]
fn inventories_beyond_the_parsers_default_node_budget_are_read() {
    let mut text = String::from(
        "version: 1\nenvironment: development\nstate: sqlite:///var/lib/credrotd/state.db\n\
         defaults: { schedule: \"0 0 3 * * *\", overlap: 1h, store: local }\n\
         databases:\n  main: { engine: postgres, url: \"postgres://a@127.0.0.1:5432/x\", password_file: /run/pw }\n\
         stores:\n  local: { kind: file, dir: /run/s }\naccounts:\n  bulk:\n    database: main\n\
         \x20   purpose: bulk\n    owner: ops\n    grants:\n      - schema: app\n        privileges: [SELECT]\n        tables:\n",
    );
    for i in 0..260_000 {
        text.push_str(&format!("          - t{i}\n"));
    }
    let checked = parse(Path::new("bulk.yaml"), &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(checked.inventory.accounts.len(), 1);
}

/// `main` takes these variables out of the environment before any thread
/// starts: every `password_env`, every `token_env`, and the AWS SDK's keys when
/// an AWS store is declared. A file that cannot be read or parsed gives none.
#[test]
fn secret_env_names_are_the_variables_the_inventory_reads_secrets_from() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("inv.yaml");
    std::fs::write(
        &p,
        "version: 1\nstate: sqlite:///x.db\n\
         databases:\n  a: { engine: postgres, url: \"postgres://u@h/x\", password_env: PG_A }\n  \
         b: { engine: mysql, url: \"mysql://u@h/x\", password_file: /run/pw }\n\
         stores:\n  v: { kind: vault, address: \"http://v\", auth: { method: token, token_env: VAULT_T } }\n  \
         s: { kind: aws_secrets_manager, region: eu-west-1 }\n\
         accounts:\n  x: { database: a, unknown_key_ignored_here: 1 }\n",
    )
    .unwrap();
    assert_eq!(
        secret_env_names(&p),
        [
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "PG_A",
            "VAULT_T"
        ]
    );
    std::fs::write(&p, "databases: [").unwrap();
    assert!(secret_env_names(&p).is_empty());
    assert!(secret_env_names(&dir.path().join("missing.yaml")).is_empty());
}

/// The committed schema is the one the parser's types give; regenerate it with
/// `cargo run -q -- schema > config/inventory.schema.json` after changing them.
#[test]
fn the_committed_json_schema_is_the_generated_one() {
    let committed = include_str!("../../config/inventory.schema.json");
    assert!(
        json_schema() == committed,
        "config/inventory.schema.json is stale: run `cargo run -q -- schema > config/inventory.schema.json`"
    );
    let schema: serde_json::Value = serde_json::from_str(committed).unwrap();
    let account = &schema["$defs"]["RawAccount"];
    assert_eq!(
        account["additionalProperties"], false,
        "unknown keys are refused"
    );
    assert!(account["properties"]["grants"].is_object());
    assert_eq!(schema["required"], serde_json::json!(["version"]));
}
