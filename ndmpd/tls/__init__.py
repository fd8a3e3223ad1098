"""TLS between ndmpd's own programs: certificates, contexts, and the data-connection relay."""
