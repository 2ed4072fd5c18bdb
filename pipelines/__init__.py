"""The `ctr` command and end-to-end jobs (demo)."""
