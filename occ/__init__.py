"""The `occ` command line: one entry point whose subcommands import only what they need."""
