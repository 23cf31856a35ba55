//! Inventory validation tests.
