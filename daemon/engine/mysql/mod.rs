//! MySQL 8 and MariaDB (`engine: mysql` / `engine: mariadb`).

pub mod password;
pub mod rules;
pub mod sql;
