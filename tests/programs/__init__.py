"""Small programs the multi-process tests run inside namespaces (`python -m tests.programs.X`)."""
