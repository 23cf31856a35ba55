//! Quoting for the statements credrotd sends to MySQL 8 and MariaDB.
//!
//! Account DDL goes to these servers as text (MariaDB refuses some of it over the
//! prepared-statement protocol), so every name from the inventory or a catalog is
//! spliced into a statement by one of the functions here and by nothing else. Each
//! one either returns a quoted form that the server reads back as exactly the given
//! name, or refuses the name with a [`QuoteError`]: a name can never change the
//! shape of a statement, and it is never silently turned into another name.
//!
//! The quoted forms are valid only in a session whose `sql_mode` is [`SQL_MODE`]:
//! the engine runs `SET SESSION sql_mode = '…'` with it right after connecting
//! (sqlx's own connect sets a mode of its own, with `PIPES_AS_CONCAT`, which this
//! replaces), and the connection's character set is `utf8mb4` (sqlx's default).
//!
//! Names are checked against what the servers can store, not only against what
//! they can parse: identifiers and account names are stored as `utf8mb3`, so a
//! character outside the Basic Multilingual Plane is refused here (MariaDB turns
//! it into `?` in an account name, with no error); account and role names live in
//! `CHAR` columns that drop trailing spaces, so `'bob '` would create `bob`.

use std::fmt;

/// The `sql_mode` credrotd pins on every MySQL/MariaDB session it opens.
///
/// - `NO_BACKSLASH_ESCAPES` makes a backslash inside a string literal an ordinary
///   character, so [`string`] only has to double `'`. Without it a name ending in
///   `\` would escape the closing quote. This is the one mode the quoting relies on.
/// - `ANSI_QUOTES` is deliberately absent: `"` stays a string delimiter (never
///   produced here) and backticks stay the only identifier quotes. Pinning the whole
///   mode also drops whatever the server's global mode adds that changes parsing
///   (`ANSI_QUOTES`, `PIPES_AS_CONCAT`, `IGNORE_SPACE`, MariaDB's `ORACLE` and
///   `EMPTY_STRING_IS_NULL`, the latter of which would turn `''` into NULL).
/// - `STRICT_ALL_TABLES`: a value that does not fit is an error, never a silent
///   truncation or a warning.
/// - `NO_ZERO_IN_DATE`, `NO_ZERO_DATE`, `ERROR_FOR_DIVISION_BY_ZERO`: MySQL 8
///   warns on every `SET` that enables strict mode without these three (they are
///   meant to be merged into strict mode, WL#8596), and they cost nothing here.
/// - `NO_ENGINE_SUBSTITUTION`: a table is never created with another engine than
///   the one named (both servers' default).
///
/// Left out on purpose: `NO_AUTO_CREATE_USER` (removed in MySQL 8.0, where setting
/// it is an error; `CREATE USER` is always explicit here anyway),
/// `ONLY_FULL_GROUP_BY` (about query semantics, not statement shape, and MariaDB
/// and MySQL disagree on which queries it accepts), `NO_AUTO_VALUE_ON_ZERO`
/// (credrotd inserts no rows with auto-increment columns). Every mode named here is
/// valid on both MariaDB 10.11 and MySQL 8.0.
///
/// With `NO_BACKSLASH_ESCAPES`, `LIKE` has no default escape character: a pattern
/// that must match `%` or `_` literally needs an explicit `ESCAPE` clause.
pub const SQL_MODE: &str = "NO_BACKSLASH_ESCAPES,STRICT_ALL_TABLES,NO_ZERO_IN_DATE,\
NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION";

/// The longest database, table or routine name, in characters (both servers).
pub const MAX_IDENT_CHARS: usize = 64;

/// The longest user or role name accepted here, in characters. This is MariaDB's
/// documented limit (10.11 itself stores up to 128); the tighter MySQL limit of 32
/// depends on the server and is enforced where the server's flavour is known.
pub const MAX_USER_CHARS: usize = 80;

/// The longest host name or pattern, in characters (both servers).
pub const MAX_HOST_CHARS: usize = 255;

/// A prefix MariaDB gives a meaning of its own: `#mysql50#x` names the file `x`
/// without the file-name encoding, i.e. possibly another object than the name says.
const LEGACY_PREFIX: &str = "#mysql50#";

/// Role names the servers reserve (compared case-insensitively): MariaDB refuses
/// `NONE` and `PUBLIC` (the role every account has, since 10.11) as role names.
const RESERVED_ROLES: [&str; 2] = ["none", "public"];

/// What a refused name was meant to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// A database, table or routine name ([`ident`]).
    Identifier,
    /// A string literal ([`string`]).
    String,
    /// The user part of an account ([`user`]).
    User,
    /// The host part of an account ([`user`]).
    Host,
    /// A role name ([`role`]).
    Role,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Identifier => "identifier",
            NameKind::String => "string literal",
            NameKind::User => "user name",
            NameKind::Host => "host name",
            NameKind::Role => "role name",
        })
    }
}

/// A name that cannot be quoted safely. The offending name is kept, and shown in
/// messages in Rust's escaped debug form (control characters, quotes and NUL made
/// visible, long names cut). These are names, never secrets: nothing secret is
/// ever passed to this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    /// The name is empty where the server has no empty name.
    #[error("{kind} is empty")]
    Empty { kind: NameKind },
    /// The name contains U+0000, which no server name or text literal may hold.
    #[error("{kind} {} contains a NUL character", shown(.name))]
    Nul { kind: NameKind, name: String },
    /// The name is longer than the server stores.
    #[error("{kind} {} is {chars} characters long; the limit is {max}", shown(.name))]
    TooLong {
        kind: NameKind,
        name: String,
        chars: usize,
        max: usize,
    },
    /// The name ends in ASCII white space, which the server strips (account and
    /// role names, and identifiers ending in a space) or refuses (identifiers
    /// ending in a tab, line feed, vertical tab, form feed or carriage return).
    #[error(
        "{kind} {} ends with white space, which the server strips or refuses",
        shown(.name)
    )]
    TrailingWhitespace { kind: NameKind, name: String },
    /// The name contains a character the server cannot store in a name
    /// (outside the Basic Multilingual Plane, or non-ASCII in a host).
    #[error(
        "{kind} {} contains {character:?} (U+{:04X}), which the server cannot store in a {kind}",
        shown(.name),
        u32::from(*.character)
    )]
    Character {
        kind: NameKind,
        name: String,
        character: char,
    },
    /// A host with upper-case letters: both servers store hosts lowercased, so the
    /// account would not be the one named. Hosts are written in lower case.
    #[error(
        "{kind} {} has upper-case letters, which the server stores lowercased",
        shown(.name)
    )]
    UpperCase { kind: NameKind, name: String },
    /// The name is one the server reserves, or starts with a prefix it interprets.
    #[error("{kind} {} is reserved by the server", shown(.name))]
    Reserved { kind: NameKind, name: String },
}

/// Quotes a database, table or routine name: `` `name` `` with backticks doubled.
///
/// Refuses an empty name, NUL, more than 64 characters, trailing white space (the
/// servers strip a space and refuse a tab or line break there), characters outside
/// the Basic Multilingual Plane (identifiers are `utf8mb3`) and MariaDB's
/// `#mysql50#` prefix. Backtick quoting does not depend on `sql_mode`.
pub fn ident(name: &str) -> Result<String, QuoteError> {
    let kind = NameKind::Identifier;
    check_name(kind, name, MAX_IDENT_CHARS)?;
    check_bmp(kind, name)?;
    if name.starts_with(LEGACY_PREFIX) {
        return Err(QuoteError::Reserved {
            kind,
            name: name.to_owned(),
        });
    }
    let mut out = String::with_capacity(name.len() + 2);
    out.push('`');
    for c in name.chars() {
        if c == '`' {
            out.push('`');
        }
        out.push(c);
    }
    out.push('`');
    Ok(out)
}

/// Quotes a text value as a `'…'` literal: `'` doubled, everything else verbatim.
///
/// Valid only under [`SQL_MODE`] (`NO_BACKSLASH_ESCAPES`), where a backslash is an
/// ordinary character. Refuses NUL. Any length and any Unicode text is accepted (it
/// is a value, sent as `utf8mb4`). Use it for names and password hashes; a
/// plaintext password must never reach SQL.
pub fn string(s: &str) -> Result<String, QuoteError> {
    if s.contains('\0') {
        return Err(QuoteError::Nul {
            kind: NameKind::String,
            name: s.to_owned(),
        });
    }
    Ok(literal(s))
}

/// Quotes an account as `'name'@'host'`.
///
/// The user name may be empty (an anonymous account, which credrotd never creates
/// but must be able to name to report or drop one) and has at most 80 characters,
/// none outside the Basic Multilingual Plane. The host is not empty (MariaDB stores
/// `''` as `%`), has at most 255 characters, is ASCII (MySQL 8 stores hosts as
/// `ascii`; DNS names are ASCII, IDNs punycode) without upper-case letters (both
/// servers lowercase hosts) and without `@` (both refuse it: "Malformed
/// hostname"). Both parts refuse NUL and trailing white space (the `CHAR` columns
/// drop trailing spaces). `%` and `_` in the host are the server's wildcards, as
/// intended.
pub fn user(name: &str, host: &str) -> Result<String, QuoteError> {
    check_account_part(NameKind::User, name, MAX_USER_CHARS)?;
    check_bmp(NameKind::User, name)?;
    check_name(NameKind::Host, host, MAX_HOST_CHARS)?;
    if let Some(character) = host.chars().find(|&c| !c.is_ascii() || c == '@') {
        return Err(QuoteError::Character {
            kind: NameKind::Host,
            name: host.to_owned(),
            character,
        });
    }
    if host.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(QuoteError::UpperCase {
            kind: NameKind::Host,
            name: host.to_owned(),
        });
    }
    Ok(format!("{}@{}", literal(name), literal(host)))
}

/// Quotes a role name for `CREATE ROLE`, `DROP ROLE`, `GRANT role TO`,
/// `SET DEFAULT ROLE` and `REVOKE role FROM`, as a string literal `'name'`.
///
/// A string literal is a role name on both servers. On MariaDB a role has no host
/// part. On MySQL 8 a role is an account, and a name without a host part means
/// `'name'@'%'`, where the `%` is a literal host with no wildcard meaning (MySQL
/// reference manual, "Specifying Role Names"): `'r'` is always the same single role.
/// Refuses an empty name (neither server has anonymous roles), NUL, more than 80
/// characters, trailing white space, characters outside the Basic Multilingual Plane,
/// and the reserved names `NONE` and `PUBLIC` in any case.
pub fn role(name: &str) -> Result<String, QuoteError> {
    let kind = NameKind::Role;
    check_name(kind, name, MAX_USER_CHARS)?;
    check_bmp(kind, name)?;
    if RESERVED_ROLES
        .iter()
        .any(|reserved| name.eq_ignore_ascii_case(reserved))
    {
        return Err(QuoteError::Reserved {
            kind,
            name: name.to_owned(),
        });
    }
    Ok(literal(name))
}

/// `'…'` with `'` doubled; the caller has checked for NUL.
fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push('\'');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// The checks every non-empty name shares: not empty, then those of an account part.
fn check_name(kind: NameKind, name: &str, max: usize) -> Result<(), QuoteError> {
    if name.is_empty() {
        return Err(QuoteError::Empty { kind });
    }
    check_account_part(kind, name, max)
}

/// No NUL, at most `max` characters, no trailing white space. An empty part passes.
fn check_account_part(kind: NameKind, name: &str, max: usize) -> Result<(), QuoteError> {
    if name.contains('\0') {
        return Err(QuoteError::Nul {
            kind,
            name: name.to_owned(),
        });
    }
    let chars = name.chars().count();
    if chars > max {
        return Err(QuoteError::TooLong {
            kind,
            name: name.to_owned(),
            chars,
            max,
        });
    }
    if name.ends_with(is_ascii_space) {
        return Err(QuoteError::TrailingWhitespace {
            kind,
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// The server's idea of white space at the end of a name (`my_isspace`): ASCII
/// only, and unlike [`char::is_ascii_whitespace`] it includes the vertical tab.
/// A trailing no-break space (U+00A0) or ideographic space is an ordinary character.
fn is_ascii_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// Refuses characters outside the Basic Multilingual Plane (names are `utf8mb3`).
fn check_bmp(kind: NameKind, name: &str) -> Result<(), QuoteError> {
    match name.chars().find(|&c| u32::from(c) > 0xFFFF) {
        Some(character) => Err(QuoteError::Character {
            kind,
            name: name.to_owned(),
            character,
        }),
        None => Ok(()),
    }
}

/// A name in escaped debug form for messages, cut after 64 characters.
fn shown(name: &str) -> String {
    const KEEP: usize = 64;
    match name.char_indices().nth(KEEP) {
        Some((cut, _)) => format!("{:?}…", &name[..cut]),
        None => format!("{name:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How a function should treat one input: the exact quoted text, or the error.
    #[derive(Debug)]
    enum Want {
        Ok(&'static str),
        Empty,
        Nul,
        TooLong(usize),
        TrailingWs,
        Character(char),
        UpperCase,
        Reserved,
    }

    use Want::*;

    fn check(kind: NameKind, input: &str, got: Result<String, QuoteError>, want: &Want) {
        let owned = input.to_owned();
        let expected = match *want {
            Ok(s) => Result::Ok(s.to_owned()),
            Empty => Err(QuoteError::Empty { kind }),
            Nul => Err(QuoteError::Nul { kind, name: owned }),
            TooLong(chars) => Err(QuoteError::TooLong {
                kind,
                name: owned,
                chars,
                max: match kind {
                    NameKind::Identifier => MAX_IDENT_CHARS,
                    NameKind::Host => MAX_HOST_CHARS,
                    _ => MAX_USER_CHARS,
                },
            }),
            TrailingWs => Err(QuoteError::TrailingWhitespace { kind, name: owned }),
            Character(character) => Err(QuoteError::Character {
                kind,
                name: owned,
                character,
            }),
            UpperCase => Err(QuoteError::UpperCase { kind, name: owned }),
            Reserved => Err(QuoteError::Reserved { kind, name: owned }),
        };
        assert_eq!(got, expected, "{kind} {input:?}");
    }

    /// One hostile input and what each function must make of it: `ident(x)`,
    /// `string(x)`, `user(x, "%")`, `user("u", x)` and `role(x)`.
    struct Case {
        input: &'static str,
        ident: Want,
        string: Want,
        user: Want,
        host: Want,
        role: Want,
    }

    fn cases() -> Vec<Case> {
        let case = |input, ident, string, user, host, role| Case {
            input,
            ident,
            string,
            user,
            host,
            role,
        };
        vec![
            case(
                "plain",
                Ok("`plain`"),
                Ok("'plain'"),
                Ok("'plain'@'%'"),
                Ok("'u'@'plain'"),
                Ok("'plain'"),
            ),
            case(
                "it's",
                Ok("`it's`"),
                Ok("'it''s'"),
                Ok("'it''s'@'%'"),
                Ok("'u'@'it''s'"),
                Ok("'it''s'"),
            ),
            case(
                "'",
                Ok("`'`"),
                Ok("''''"),
                Ok("''''@'%'"),
                Ok("'u'@''''"),
                Ok("''''"),
            ),
            case(
                "x'; DROP USER root; --",
                Ok("`x'; DROP USER root; --`"),
                Ok("'x''; DROP USER root; --'"),
                Ok("'x''; DROP USER root; --'@'%'"),
                UpperCase,
                Ok("'x''; DROP USER root; --'"),
            ),
            case(
                "x'; drop user root; --",
                Ok("`x'; drop user root; --`"),
                Ok("'x''; drop user root; --'"),
                Ok("'x''; drop user root; --'@'%'"),
                Ok("'u'@'x''; drop user root; --'"),
                Ok("'x''; drop user root; --'"),
            ),
            case(
                "back`tick",
                Ok("`back``tick`"),
                Ok("'back`tick'"),
                Ok("'back`tick'@'%'"),
                Ok("'u'@'back`tick'"),
                Ok("'back`tick'"),
            ),
            case(
                "`",
                Ok("````"),
                Ok("'`'"),
                Ok("'`'@'%'"),
                Ok("'u'@'`'"),
                Ok("'`'"),
            ),
            case(
                "x`; DROP DATABASE mysql; -- ",
                TrailingWs,
                Ok("'x`; DROP DATABASE mysql; -- '"),
                TrailingWs,
                TrailingWs,
                TrailingWs,
            ),
            case(
                "back\\slash",
                Ok("`back\\slash`"),
                Ok("'back\\slash'"),
                Ok("'back\\slash'@'%'"),
                Ok("'u'@'back\\slash'"),
                Ok("'back\\slash'"),
            ),
            case(
                "trailing\\",
                Ok("`trailing\\`"),
                Ok("'trailing\\'"),
                Ok("'trailing\\'@'%'"),
                Ok("'u'@'trailing\\'"),
                Ok("'trailing\\'"),
            ),
            case(
                "\\'",
                Ok("`\\'`"),
                Ok("'\\'''"),
                Ok("'\\'''@'%'"),
                Ok("'u'@'\\'''"),
                Ok("'\\'''"),
            ),
            case(
                "\\",
                Ok("`\\`"),
                Ok("'\\'"),
                Ok("'\\'@'%'"),
                Ok("'u'@'\\'"),
                Ok("'\\'"),
            ),
            case(
                "100%",
                Ok("`100%`"),
                Ok("'100%'"),
                Ok("'100%'@'%'"),
                Ok("'u'@'100%'"),
                Ok("'100%'"),
            ),
            case(
                "%",
                Ok("`%`"),
                Ok("'%'"),
                Ok("'%'@'%'"),
                Ok("'u'@'%'"),
                Ok("'%'"),
            ),
            case(
                "a_b",
                Ok("`a_b`"),
                Ok("'a_b'"),
                Ok("'a_b'@'%'"),
                Ok("'u'@'a_b'"),
                Ok("'a_b'"),
            ),
            case(
                "user@host",
                Ok("`user@host`"),
                Ok("'user@host'"),
                Ok("'user@host'@'%'"),
                Character('@'),
                Ok("'user@host'"),
            ),
            case(
                "'@'%",
                Ok("`'@'%`"),
                Ok("'''@''%'"),
                Ok("'''@''%'@'%'"),
                Character('@'),
                Ok("'''@''%'"),
            ),
            case(
                "-- comment",
                Ok("`-- comment`"),
                Ok("'-- comment'"),
                Ok("'-- comment'@'%'"),
                Ok("'u'@'-- comment'"),
                Ok("'-- comment'"),
            ),
            case(
                "/* c */",
                Ok("`/* c */`"),
                Ok("'/* c */'"),
                Ok("'/* c */'@'%'"),
                Ok("'u'@'/* c */'"),
                Ok("'/* c */'"),
            ),
            case(
                "/*!50000 DROP",
                Ok("`/*!50000 DROP`"),
                Ok("'/*!50000 DROP'"),
                Ok("'/*!50000 DROP'@'%'"),
                UpperCase,
                Ok("'/*!50000 DROP'"),
            ),
            case(
                "a;b",
                Ok("`a;b`"),
                Ok("'a;b'"),
                Ok("'a;b'@'%'"),
                Ok("'u'@'a;b'"),
                Ok("'a;b'"),
            ),
            case(
                "\"dq\"",
                Ok("`\"dq\"`"),
                Ok("'\"dq\"'"),
                Ok("'\"dq\"'@'%'"),
                Ok("'u'@'\"dq\"'"),
                Ok("'\"dq\"'"),
            ),
            case(
                "line\nbreak",
                Ok("`line\nbreak`"),
                Ok("'line\nbreak'"),
                Ok("'line\nbreak'@'%'"),
                Ok("'u'@'line\nbreak'"),
                Ok("'line\nbreak'"),
            ),
            case(
                "cr\r\ntab\tin",
                Ok("`cr\r\ntab\tin`"),
                Ok("'cr\r\ntab\tin'"),
                Ok("'cr\r\ntab\tin'@'%'"),
                Ok("'u'@'cr\r\ntab\tin'"),
                Ok("'cr\r\ntab\tin'"),
            ),
            case(
                "tab\t",
                TrailingWs,
                Ok("'tab\t'"),
                TrailingWs,
                TrailingWs,
                TrailingWs,
            ),
            case(
                "lf\n",
                TrailingWs,
                Ok("'lf\n'"),
                TrailingWs,
                TrailingWs,
                TrailingWs,
            ),
            case(
                "vt\x0b",
                TrailingWs,
                Ok("'vt\x0b'"),
                TrailingWs,
                TrailingWs,
                TrailingWs,
            ),
            case(
                "ff\x0c",
                TrailingWs,
                Ok("'ff\x0c'"),
                TrailingWs,
                TrailingWs,
                TrailingWs,
            ),
            case(
                "cr\r",
                TrailingWs,
                Ok("'cr\r'"),
                TrailingWs,
                TrailingWs,
                TrailingWs,
            ),
            case(
                "nbsp\u{a0}",
                Ok("`nbsp\u{a0}`"),
                Ok("'nbsp\u{a0}'"),
                Ok("'nbsp\u{a0}'@'%'"),
                Character('\u{a0}'),
                Ok("'nbsp\u{a0}'"),
            ),
            case(
                "esc\u{1b}[31m",
                Ok("`esc\u{1b}[31m`"),
                Ok("'esc\u{1b}[31m'"),
                Ok("'esc\u{1b}[31m'@'%'"),
                Ok("'u'@'esc\u{1b}[31m'"),
                Ok("'esc\u{1b}[31m'"),
            ),
            case(
                " leading",
                Ok("` leading`"),
                Ok("' leading'"),
                Ok("' leading'@'%'"),
                Ok("'u'@' leading'"),
                Ok("' leading'"),
            ),
            case(
                "dot.slash/",
                Ok("`dot.slash/`"),
                Ok("'dot.slash/'"),
                Ok("'dot.slash/'@'%'"),
                Ok("'u'@'dot.slash/'"),
                Ok("'dot.slash/'"),
            ),
            case(
                "日本語",
                Ok("`日本語`"),
                Ok("'日本語'"),
                Ok("'日本語'@'%'"),
                Character('日'),
                Ok("'日本語'"),
            ),
            case(
                "Ωmega'é",
                Ok("`Ωmega'é`"),
                Ok("'Ωmega''é'"),
                Ok("'Ωmega''é'@'%'"),
                Character('Ω'),
                Ok("'Ωmega''é'"),
            ),
            case(
                "key🔑",
                Character('🔑'),
                Ok("'key🔑'"),
                Character('🔑'),
                Character('🔑'),
                Character('🔑'),
            ),
            case("nul\0x", Nul, Nul, Nul, Nul, Nul),
            case("\0", Nul, Nul, Nul, Nul, Nul),
            case("", Empty, Ok("''"), Ok("''@'%'"), Empty, Empty),
            case(
                " ",
                TrailingWs,
                Ok("' '"),
                TrailingWs,
                TrailingWs,
                TrailingWs,
            ),
            case(
                "trailing ",
                TrailingWs,
                Ok("'trailing '"),
                TrailingWs,
                TrailingWs,
                TrailingWs,
            ),
            case(
                "none",
                Ok("`none`"),
                Ok("'none'"),
                Ok("'none'@'%'"),
                Ok("'u'@'none'"),
                Reserved,
            ),
            case(
                "PUBLIC",
                Ok("`PUBLIC`"),
                Ok("'PUBLIC'"),
                Ok("'PUBLIC'@'%'"),
                UpperCase,
                Reserved,
            ),
            case(
                "#mysql50#x",
                Reserved,
                Ok("'#mysql50#x'"),
                Ok("'#mysql50#x'@'%'"),
                Ok("'u'@'#mysql50#x'"),
                Ok("'#mysql50#x'"),
            ),
        ]
    }

    #[test]
    fn hostile_inputs_quote_exactly_or_are_refused() {
        for case in cases() {
            let x = case.input;
            check(NameKind::Identifier, x, ident(x), &case.ident);
            check(NameKind::String, x, string(x), &case.string);
            check(NameKind::User, x, user(x, "%"), &case.user);
            check(NameKind::Host, x, user("u", x), &case.host);
            check(NameKind::Role, x, role(x), &case.role);
        }
    }

    #[test]
    fn lengths_are_counted_in_characters_at_each_limit() {
        let a = |n: usize| "a".repeat(n);
        let e = |n: usize| "é".repeat(n);
        // Identifiers: 64 characters (bytes do not matter: 64 × 'é' is 128 bytes).
        for name in [a(64), e(64)] {
            assert_eq!(ident(&name), Result::Ok(format!("`{name}`")));
        }
        for name in [a(65), e(65)] {
            check(NameKind::Identifier, &name, ident(&name), &TooLong(65));
        }
        // User and role names: 80 characters.
        for name in [a(80), e(80)] {
            assert_eq!(user(&name, "%"), Result::Ok(format!("'{name}'@'%'")));
            assert_eq!(role(&name), Result::Ok(format!("'{name}'")));
            assert_eq!(
                ident(&name).ok(),
                None,
                "80 characters is too long for an identifier"
            );
        }
        for name in [a(81), e(81)] {
            check(NameKind::User, &name, user(&name, "%"), &TooLong(81));
            check(NameKind::Role, &name, role(&name), &TooLong(81));
        }
        // Hosts: 255 characters.
        let host = a(255);
        assert_eq!(user("u", &host), Result::Ok(format!("'u'@'{host}'")));
        let host = a(256);
        check(NameKind::Host, &host, user("u", &host), &TooLong(256));
        // Strings have no limit here.
        let long = a(70_000);
        assert_eq!(string(&long), Result::Ok(format!("'{long}'")));
    }

    #[test]
    fn the_first_problem_found_is_reported() {
        // NUL before length, length before trailing space, trailing space before
        // the character set.
        let name = format!("{}\0 ", "a".repeat(90));
        check(NameKind::Identifier, &name, ident(&name), &Nul);
        let name = format!("{} ", "a".repeat(90));
        check(NameKind::User, &name, user(&name, "%"), &TooLong(91));
        check(NameKind::Role, "🔑 ", role("🔑 "), &TrailingWs);
        // The user part is checked before the host part.
        assert_eq!(
            user("", "\0"),
            Err(QuoteError::Nul {
                kind: NameKind::Host,
                name: "\0".into()
            })
        );
        assert!(matches!(
            user("a\0", "b\0"),
            Err(QuoteError::Nul {
                kind: NameKind::User,
                ..
            })
        ));
    }

    #[test]
    fn reserved_role_names_are_refused_in_any_case() {
        for name in ["none", "NONE", "None", "public", "Public", "PUBLIC"] {
            check(NameKind::Role, name, role(name), &Reserved);
        }
        assert_eq!(role("nonexistent"), Result::Ok("'nonexistent'".into()));
        assert_eq!(role("public_reader"), Result::Ok("'public_reader'".into()));
    }

    #[test]
    fn messages_name_the_problem_and_show_the_name_escaped() {
        let message = |r: Result<String, QuoteError>| r.unwrap_err().to_string();
        assert_eq!(message(ident("")), "identifier is empty");
        assert_eq!(
            message(string("a\0'b")),
            r#"string literal "a\0'b" contains a NUL character"#
        );
        assert_eq!(
            message(user("x\nin", "h ")),
            r#"host name "h " ends with white space, which the server strips or refuses"#
        );
        assert_eq!(
            message(user("u", "hé")),
            r#"host name "hé" contains 'é' (U+00E9), which the server cannot store in a host name"#
        );
        assert_eq!(
            message(role("k🔑")),
            r#"role name "k🔑" contains '🔑' (U+1F511), which the server cannot store in a role name"#
        );
        assert_eq!(
            message(user("u", "DB.example")),
            r#"host name "DB.example" has upper-case letters, which the server stores lowercased"#
        );
        assert_eq!(
            message(role("None")),
            r#"role name "None" is reserved by the server"#
        );
        assert_eq!(
            message(ident("#mysql50#t")),
            r##"identifier "#mysql50#t" is reserved by the server"##
        );
        // Control characters never reach a log line raw, and long names are cut.
        let text = message(ident(&format!("\u{1b}[2J{}", "x".repeat(100))));
        assert!(!text.contains('\u{1b}'), "{text}");
        assert_eq!(
            text,
            format!(
                "identifier \"\\u{{1b}}[2J{}\"… is 104 characters long; the limit is 64",
                "x".repeat(60)
            )
        );
        assert_eq!(
            message(ident(&"y".repeat(65))),
            format!(
                "identifier \"{}\"… is 65 characters long; the limit is 64",
                "y".repeat(64)
            )
        );
    }

    #[test]
    fn sql_mode_has_what_the_quoting_needs_and_nothing_mysql_8_refuses() {
        let modes: Vec<&str> = SQL_MODE.split(',').collect();
        assert!(modes.contains(&"NO_BACKSLASH_ESCAPES"));
        assert!(modes.contains(&"STRICT_ALL_TABLES"));
        for absent in [
            "ANSI_QUOTES",
            "ANSI",
            "NO_AUTO_CREATE_USER",
            "PIPES_AS_CONCAT",
            "ORACLE",
        ] {
            assert!(!modes.contains(&absent), "{absent}");
        }
        // It is itself quotable, as the engine sends it: SET SESSION sql_mode = '…'.
        assert_eq!(string(SQL_MODE), Result::Ok(format!("'{SQL_MODE}'")));
        assert!(!SQL_MODE.contains(' '));
    }
}
