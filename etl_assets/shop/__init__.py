"""The reference shop domain: its pipeline specs (specs/) and transform SQL (sql/)."""
