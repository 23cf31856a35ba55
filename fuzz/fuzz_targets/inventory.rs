//! Inventory parsing and validation: any bytes give an inventory or located
//! errors, never a panic; every error carries a line and column.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match credrotd::inventory::parse(Path::new("/fuzz/inventory.yaml"), text) {
        Ok(checked) => {
            // What validation accepted is internally consistent.
            for account in checked.inventory.accounts.values() {
                assert!(checked.inventory.databases.contains_key(&account.database));
            }
        }
        Err(credrotd::inventory::InventoryError::Invalid { errors }) => {
            assert!(!errors.is_empty());
            for e in &errors {
                assert!(e.line >= 1 && e.column >= 1, "{e}");
            }
        }
        Err(_) => {}
    }
});
