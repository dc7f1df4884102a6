"""The switch: listeners, pipeline, issuer links, admin. All I/O lives here."""
