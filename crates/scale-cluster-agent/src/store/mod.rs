//! The embedded state database (SQLite): the single source of truth for clusters and their port blocks.
