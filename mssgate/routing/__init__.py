"""Declarative routing of received documents (issue 16): rules matched at ingest that copy a
document to another mailbox's queue, tag it, hold it, or stop. See docs/operator-guide.md,
"Routing rules". Kept import-light: the configuration imports the rule model."""
