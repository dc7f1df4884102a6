"""Load-testing kit: terminal simulator, terminal client, generators."""
