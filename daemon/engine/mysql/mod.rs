//! MySQL 8 and MariaDB (`engine: mysql` / `engine: mariadb`). (The engine is
//! being written.)

pub mod password;
pub mod rules;
pub mod sql;
